"""The DAVIS dataset layout, as video object segmentation tools expect it.

    ROOT/JPEGImages/<res>/<seq>/00000.jpg ...     frames (res: 480p, Full-Resolution, ...)
    ROOT/Annotations/<res>/<seq>/00000.png ...    palette PNGs, pixel value = object id (0 background)
    ROOT/ImageSets/<year>/<split>.txt             optional sequence lists (train, val, test-dev...)

Which annotations are references (`ref_frames`):
  first - the first annotated frame only: the semi-supervised protocol, and the right choice on
          train/val, whose Annotations are the full ground truth;
  all   - every annotated frame (datasets that annotate a few frames, objects entering later);
  auto  - first when every frame is annotated (that is ground truth), else all.
"""

from __future__ import annotations

from pathlib import Path

from runtime.errors import CoordGANError
from runtime.io.video import FRAME_SUFFIXES, natural_key

REF_FRAMES = ("auto", "first", "all")
DEFAULT_RESOLUTION = "480p"


def is_davis_root(path) -> bool:
    return (Path(path) / "JPEGImages").is_dir()


def resolution(root, res: str | None = None, folder: str = "JPEGImages") -> str:
    """The resolution folder (of root/folder) to use: the one asked for, else 480p, else the only one."""
    base = Path(root) / folder
    found = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    if res is not None:
        if res not in found:
            raise CoordGANError(f"{base} has no {res!r} folder (it has: {', '.join(found) or 'nothing'}).")
        return res
    if DEFAULT_RESOLUTION in found:
        return DEFAULT_RESOLUTION
    if len(found) == 1:
        return found[0]
    raise CoordGANError(f"{base} holds {', '.join(found) or 'no resolution folders'}; choose one with --resolution.")


def split_sequences(root, split: str) -> list[str]:
    """The sequences an ImageSets list names (ImageSets/<split>.txt or ImageSets/<year>/<split>.txt)."""
    sets = Path(root) / "ImageSets"
    candidates = sorted(sets.glob(f"{split}.txt")) + sorted(sets.glob(f"*/{split}.txt"), reverse=True)
    if not candidates:
        raise CoordGANError(f"{sets} has no {split}.txt, so the split {split!r} is unknown.")
    return [line.strip() for line in candidates[0].read_text().splitlines() if line.strip()]


def sequences(root, res: str, split: str | None = None, only: list[str] | None = None) -> list[str]:
    """Sorted sequence names: all under JPEGImages/<res>, or those of a split, or those asked for."""
    base = Path(root) / "JPEGImages" / res
    present = sorted(p.name for p in base.iterdir() if p.is_dir())
    names = split_sequences(root, split) if split else present
    if only:
        names = [n for n in names if n in set(only)] if split else list(only)
    missing = [n for n in names if n not in present]
    if missing:
        raise CoordGANError(f"Sequence {missing[0]!r} is not under {base}.")
    if not names:
        raise CoordGANError(f"{base} holds no sequences.")
    return sorted(set(names))


def frames_dir(root, res: str, seq: str) -> Path:
    return Path(root) / "JPEGImages" / res / seq


def annotations_dir(root, res: str, seq: str) -> Path:
    return Path(root) / "Annotations" / res / seq


def annotation_files(root, res: str, seq: str) -> list[Path]:
    folder = annotations_dir(root, res, seq)
    files = sorted(folder.glob("*.png"), key=lambda p: natural_key(p.name)) if folder.is_dir() else []
    if not files:
        raise CoordGANError(f"Sequence {seq!r} has no annotations ({folder} holds no .png masks).")
    return files


def check_ref_frames(ref_frames: str) -> None:
    if ref_frames not in REF_FRAMES:
        raise CoordGANError(f"--ref-frames must be one of {', '.join(REF_FRAMES)}, not {ref_frames!r}.")


def reference_files(root, res: str, seq: str, ref_frames: str = "auto") -> list[Path]:
    """The annotation PNGs that serve as references, by the policy in the module docstring."""
    check_ref_frames(ref_frames)
    files = annotation_files(root, res, seq)
    if ref_frames == "first":
        return files[:1]
    if ref_frames == "all":
        return files
    n_frames = sum(1 for p in frames_dir(root, res, seq).iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
    return files[:1] if len(files) >= n_frames else files
