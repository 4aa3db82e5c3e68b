"""The python-backend models of the repository; each <model>/1/model.py there imports its
TritonPythonModel from here (encoder, generator, corr_lookup; video), so the logic is tested here."""
