"""Re-encode a CIFAR-10 folder as JPEG at another quality, to measure how much JPEG loss costs.

    python scripts/reencode_jpeg.py ../shared/data/cifar10 /tmp/cifar-q50 --quality 50

Writes OUT/{train,test}/<class>/NNNN.jpg (Pillow's default 4:2:0 chroma subsampling). Train on
both folders with the same recipe and compare (docs/shipped-model.md). Never write into the
project: the output is a full copy of the data.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command(help=__doc__)
@click.argument("src", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--quality", type=click.IntRange(1, 95), default=50, show_default=True)
def main(src: Path, out: Path, quality: int) -> None:
    from PIL import Image
    from tqdm import tqdm

    from runtime.atomic import atomic_path

    files = sorted(src.glob("*/*/*.jpg")) + sorted(src.glob("*/*/*.png"))
    if not files:
        raise click.ClickException(f"{src}: no SPLIT/CLASS/*.jpg or *.png images")
    for path in tqdm(files, unit="img", desc=f"quality {quality}"):
        # Atomic (and creates the folders): an interrupted run leaves no half-written image.
        with Image.open(path) as image, atomic_path((out / path.relative_to(src)).with_suffix(".jpg")) as tmp:
            image.convert("RGB").save(tmp, format="JPEG", quality=quality)
    click.echo(f"wrote {len(files):,} images at quality {quality} to {out}")


if __name__ == "__main__":
    main()
