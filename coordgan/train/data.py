"""Training data: an image folder or the procedural faces, and a loader that resumes exactly.

Items are pure functions of (index, flip): the per-epoch order comes from DistributedSampler
(seeded, sharded by rank) and the horizontal flips from a generator seeded by (seed, epoch), so
the only loader state is (epoch, batches taken) and worker processes change nothing.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from runtime.errors import STOP_SIGNALS, CoordGANError
from runtime.io.images import image_extensions, open_image

SYNTHETIC = "synthetic-faces"


def _to_tensor(image: np.ndarray, flip: bool) -> torch.Tensor:
    """HxWx3 uint8 -> (3, H, W) float32 in [-1, 1]."""
    if flip:
        image = image[:, ::-1]
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float()  # a copy: PIL arrays are read-only
    return x.div_(127.5).sub_(1.0)


# The 256 values _to_tensor gives, computed the same way on the CPU. Held data on a GPU indexes this
# table instead of dividing there: CUDA divides by a Python scalar as a multiply by its reciprocal,
# which rounds 111 of the 256 values differently.
_UNIT = torch.arange(256, dtype=torch.float32).div_(127.5).sub_(1.0)


def _leave_signals_to_the_trainer(_worker_id: int) -> None:
    """Workers ignore SIGTERM/SIGINT/SIGHUP. Ctrl-C, `docker stop`, Slurm, `kill -- -PGID` and a
    closing terminal signal the whole process group; a worker that died of it would crash the
    trainer mid-step instead of letting it finish the step, checkpoint and stop (the trainer ends
    its workers itself)."""
    for sig in (*STOP_SIGNALS, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


class ImageFolder(Dataset):
    """Every image file under `root` (recursively), resized and center-cropped to `size`.

    A file that does not decode is skipped: the item falls through to the next readable file and
    reports the bad path, so the trainer counts it and a corrupt file never stops a run.
    """

    def __init__(self, root, size: int):
        self.root = Path(root)
        if not self.root.is_dir():
            raise CoordGANError(f"Data folder {self.root} does not exist or is not a folder.")
        exts = image_extensions()
        self.files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in exts and p.is_file())
        if not self.files:
            raise CoordGANError(f"Data folder {self.root} holds no image files "
                                "(looked for .png, .jpg, .webp, .bmp, .tif and every other format Pillow reads).")
        self.size = size

    def __len__(self) -> int:
        return len(self.files)

    def _read(self, path: Path) -> np.ndarray:
        from PIL import Image, ImageOps

        img = ImageOps.fit(open_image(path), (self.size, self.size), Image.LANCZOS, centering=(0.5, 0.5))
        return np.asarray(img)

    def raw(self, index: int):
        """(HxWx3 uint8, the unreadable paths passed over joined by newlines, whether any file read)."""
        bad = []
        for attempt in range(len(self.files)):
            path = self.files[(index + attempt) % len(self.files)]
            try:
                image = self._read(path)
            except Exception:  # noqa: BLE001 - PIL raises many types for bad data; one bad file must not stop a run
                bad.append(str(path))
                continue
            return image, "\n".join(bad), True
        # Not raised here: an exception in a worker process reaches the trainer wrapped in a traceback.
        return np.full((self.size, self.size, 3), 127, np.uint8), "\n".join(bad), False

    def __getitem__(self, item):
        index, flip = item
        image, bad, ok = self.raw(index)
        return _to_tensor(image, flip), bad, ok


class SyntheticFacesData(Dataset):
    """coordgan.data.SyntheticFaces as training images (labels dropped)."""

    def __init__(self, size: int, length: int = 10_000, seed: int = 0):
        from coordgan.data import SyntheticFaces

        self.faces = SyntheticFaces(size=size, seed=seed, length=length)

    def __len__(self) -> int:
        return len(self.faces)

    def raw(self, index: int):
        return self.faces[index][0], "", True

    def __getitem__(self, item):
        index, flip = item
        return _to_tensor(self.raw(index)[0], flip), "", True


def data_source(data: str) -> str:
    """--data as a run records it: the procedural faces by name, a folder by its absolute path (the same
    folder named from another working directory is the same data)."""
    return data if data == SYNTHETIC else str(Path(data).resolve())


def make_dataset(data: str, size: int) -> Dataset:
    if data == SYNTHETIC:
        return SyntheticFacesData(size)
    return ImageFolder(data, size)


class _Raw(Dataset):
    """Items as stored: (HxWx3 uint8 tensor, unreadable paths, ok), in index order, unflipped."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, bad, ok = self.dataset.raw(index)
        return torch.from_numpy(np.array(image)), bad, ok  # a copy: PIL arrays are read-only


def held_bytes(dataset: Dataset, size: int) -> int:
    return len(dataset) * size * size * 3


class HeldData:
    """The whole dataset decoded once (by `workers` processes) and kept as uint8 on `device`: on a
    large GPU the renderer or the JPEG decoder then never starves a step (measured: `rate`)."""

    def __init__(self, dataset: Dataset, device: str, workers: int):
        t0 = time.perf_counter()
        loader = DataLoader(_Raw(dataset), batch_size=256, num_workers=workers, shuffle=False,
                            worker_init_fn=_leave_signals_to_the_trainer if workers else None)
        chunks, self.bad, ok = [], [], True
        for images, bad, good in loader:
            chunks.append(images.to(device))
            self.bad += list(bad)
            ok = ok and bool(good.all())
        if not ok:
            files = getattr(dataset, "files", [])
            raise CoordGANError(f"None of the {len(files)} image files in "
                                f"{getattr(dataset, 'root', 'the data folder')} can be read.")
        self.images = torch.cat(chunks)
        self.unit = _UNIT.to(device)
        self.seconds = time.perf_counter() - t0
        self.rate = len(dataset) / self.seconds
        self.note = (f"data: {len(dataset)} images held on {device} ({self.images.numel() / 2**20:.0f} MiB), "
                     f"decoded in {self.seconds:.1f} s ({self.rate:.0f} images/s, {workers} worker(s))")

    def batches(self, order: list[int], flips: torch.Tensor, batch: int):
        """What DataLoader would collate from the same order and flips, bit for bit."""
        dev = self.images.device
        for start in range(0, len(order) - batch + 1, batch):
            idx = torch.tensor(order[start:start + batch])
            x = self.images[idx.to(dev)]
            flip = flips[idx].bool().to(dev)[:, None, None, None]
            x = self.unit[torch.where(flip, x.flip(2), x).permute(0, 3, 1, 2).contiguous().long()]
            yield x, [self.bad[i] for i in idx.tolist()], torch.ones(batch, dtype=torch.bool)


def hold(dataset: Dataset, size: int, device: str, workers: int, want: bool | None) -> HeldData | None:
    """HeldData when asked (`want` True) or, by default, on CUDA when it takes under a quarter of the
    free memory (and 8 GiB); None streams every batch through DataLoader workers."""
    nbytes = held_bytes(dataset, size)
    free = torch.cuda.mem_get_info(torch.device(device))[0] if device.startswith("cuda") else None
    if want is None:
        want = free is not None and nbytes <= min(8 << 30, free // 4)
    elif want and free is not None and nbytes > free // 2:
        raise CoordGANError(f"Holding the data on {device} takes {nbytes / 2**30:.1f} GiB, more than half of its "
                            f"free {free / 2**30:.1f} GiB; stream it instead (--stream-data).")
    return HeldData(dataset, device, workers) if want else None


class _EpochSampler(Sampler):
    """One epoch of DistributedSampler's order from `start`, each index paired with its flip bit."""

    def __init__(self, order: list[int], flips: torch.Tensor, start: int):
        self.order, self.flips, self.start = order, flips, start

    def __iter__(self):
        for index in self.order[self.start:]:
            yield index, bool(self.flips[index])

    def __len__(self) -> int:
        return len(self.order) - self.start


class ResumableLoader:
    """Endless batches; `state()` / `load_state()` give (epoch, batches taken in that epoch)."""

    def __init__(self, dataset: Dataset, batch: int, seed: int, rank: int = 0, world: int = 1,
                 workers: int = 0, flip: bool = True, held: HeldData | None = None):
        self.dataset, self.batch, self.seed, self.held = dataset, batch, seed, held
        self.rank, self.world, self.workers, self.flip = rank, world, workers, flip
        self.sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                                          seed=seed, drop_last=True)
        self.per_epoch = self.sampler.num_samples // batch
        if self.per_epoch == 0:
            raise CoordGANError(f"The data has {len(dataset)} images, fewer than one batch of {batch} "
                                f"per process ({world} process(es)).")
        self.epoch, self.taken = 0, 0
        self._it = None

    def state(self) -> dict:
        return {"epoch": self.epoch, "taken": self.taken}

    def load_state(self, state: dict) -> None:
        self.epoch, self.taken = int(state["epoch"]), int(state["taken"])
        self._it = None

    def _start(self):
        self.sampler.set_epoch(self.epoch)
        order = list(self.sampler)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        flips = (torch.randint(0, 2, (len(self.dataset),), generator=gen) if self.flip
                 else torch.zeros(len(self.dataset), dtype=torch.int64))
        if self.held is not None:
            self._it = self.held.batches(order[self.taken * self.batch:], flips, self.batch)
            return
        sampler = _EpochSampler(order, flips, self.taken * self.batch)
        # An own generator: DataLoader otherwise draws its base seed from the global RNG, which
        # would make the training RNG depend on when epochs start and runs resume.
        loader = DataLoader(self.dataset, batch_size=self.batch, sampler=sampler, drop_last=True,
                            num_workers=self.workers, generator=torch.Generator().manual_seed(self.epoch),
                            persistent_workers=False, pin_memory=torch.cuda.is_available(),
                            worker_init_fn=_leave_signals_to_the_trainer if self.workers else None)
        self._it = iter(loader)

    def close(self) -> None:
        """End the worker processes now, through DataLoader's own shutdown: they ignore SIGTERM, so
        leaving them to the interpreter's exit (which terminates, then joins) would hang."""
        it, self._it = self._it, None
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()

    def next(self):
        """(images (B, 3, H, W), [paths of unreadable files met])."""
        while True:
            if self._it is None:
                self._start()
            try:
                images, bad, ok = next(self._it)
            except StopIteration:
                self.epoch, self.taken, self._it = self.epoch + 1, 0, None
                continue
            if not bool(ok.all()):
                files = getattr(self.dataset, "files", [])
                raise CoordGANError(f"None of the {len(files)} image files in "
                                    f"{getattr(self.dataset, 'root', 'the data folder')} can be read.")
            self.taken += 1
            return images, [p for entry in bad if entry for p in entry.split("\n")]


def default_workers() -> int:
    return min(4, max(0, (os.cpu_count() or 1) - 1))
