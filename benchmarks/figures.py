"""Figure grid of the DatUS stages for a few images (issue 7).

Usage::

    python benchmarks/figures.py IMAGES GT --gt-format suim6 \\
        --weights ../shared/weights/dinov2_vits14_imgfocus.pth [--denoised DIR] \\
        [--out docs/images/figures.png]

Runs the default pipeline (``Params()``, or the flags given) over the whole folder, since
k-means is dataset-wide, then draws one row per image: image | ground truth | Louvain
partitions | segments (noise white) | initial pseudo mask | the same with guided edges
(``refine="guided"``) | de-noised mask (when ``--denoised`` holds ``<stem>.png`` cluster
masks). The column titles give each mask set's mIoU and boundary F1 over the whole folder.
Pseudo masks take the colour of the class their cluster is Hungarian-matched to over the
whole set; unmatched clusters are grey and unlabelled pixels white (SUIM draws water
black). Rows are evenly spaced through the sorted file list unless ``--stems`` names them,
so the figure is not a pick of the best cases.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from napari_datus.core.boundary import BoundaryScore  # noqa: E402
from napari_datus.core.metrics import Confusion, evaluate  # noqa: E402
from napari_datus.core.pseudolabel import UNLABELLED, upsample_nearest  # noqa: E402
from napari_datus.io.dataset import list_images, match_ground_truth  # noqa: E402
from napari_datus.io.images import read_array, read_image  # noqa: E402
from napari_datus.io.masks import class_colours, class_names, read_ground_truth  # noqa: E402
from napari_datus.pipeline import Params, drive, pseudo_mask, run  # noqa: E402

GREY = np.array([128, 128, 128], dtype=np.uint8)
WHITE = np.full(3, 255, dtype=np.uint8)


def id_colours(n: int, seed: int = 0) -> np.ndarray:
    """(n, 3) uint8 distinct-looking colours for arbitrary ids (partitions, segments)."""
    palette = (plt.get_cmap("tab20")(np.arange(20))[:, :3] * 255).astype(np.uint8)
    order = np.random.default_rng(seed).permutation(max(n, 1))
    return palette[order % 20][:n]


def paint_ids(ids: np.ndarray, zero_white: bool = False) -> np.ndarray:
    """(H, W, 3) uint8 picture of an integer id map; 0 white when ``zero_white``."""
    rgb = id_colours(int(ids.max()) + 1)[ids]
    if zero_white:
        rgb[ids == 0] = WHITE
    return rgb


def paint_clusters(mask: np.ndarray, mapping: dict[str, int | None],
                   colours: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: each cluster in its matched class colour, unmatched grey, 255 white."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    for cluster, cls in mapping.items():
        lut[int(cluster)] = GREY if cls is None else colours[cls]
    lut[UNLABELLED] = WHITE
    return lut[mask]


def matched(masks: list[np.ndarray], gts: list[np.ndarray], k: int, names: list[str]) -> dict:
    """Hungarian mapping of clusters to classes over a whole set of masks."""
    confusion = Confusion(k, len(names))
    for mask, gt in zip(masks, gts):
        confusion.add(mask, gt)
    return evaluate(confusion, names)["mapping"]


def scores(masks: list[np.ndarray], gts: list[np.ndarray], k: int, names: list[str]) -> str:
    """mIoU and boundary F1 (tolerance 1% of the diagonal) of a mask set, for a title."""
    confusion = Confusion(k, len(names))
    boundary = BoundaryScore()
    for mask, gt in zip(masks, gts):
        confusion.add(mask, gt)
        boundary.add(mask, gt)
    miou, f1 = evaluate(confusion, names)["miou"], boundary.result()["f1"]
    return f"mIoU {miou:.1%}, boundary F1 {f1:.1%}"


def pick_rows(stems: list[str], count: int) -> list[int]:
    """``count`` indices evenly spaced through the list."""
    return sorted({int(i) for i in np.linspace(0, len(stems) - 1, count)})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", type=Path)
    parser.add_argument("gt", type=Path)
    parser.add_argument("--gt-format", default="suim6", choices=("suim6", "suim8"))
    parser.add_argument("--model", default="vit_small_patch14_dinov2")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--stems", nargs="*", default=None)
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--denoised", type=Path, default=None,
                        help="folder of de-noised cluster masks <stem>.png")
    parser.add_argument("--resolution", type=int, default=Params.resolution)
    parser.add_argument("--clusters", type=int, default=Params.clusters)
    parser.add_argument("--out", type=Path, default=Path("docs/images/figures.png"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    files = list_images(args.images)
    gt_files = match_ground_truth(files, args.gt)
    files = [f for f in files if f.stem in gt_files]
    params = Params(model=args.model, weights=args.weights, device="cpu",
                    resolution=args.resolution, clusters=args.clusters)
    sources = [(f.stem, partial(read_image, f)) for f in files]
    result = drive(run(sources, len(files), params))
    gts = [read_ground_truth(gt_files[f.stem], args.gt_format) for f in files]
    names = class_names(args.gt_format)
    colours = class_colours(args.gt_format)
    pseudo = [result.pseudo_mask(i) for i in range(len(files))]
    mapping = matched(pseudo, gts, params.clusters, names)
    guided = [pseudo_mask(r, c, params.fill_noise, "guided", read_image(f))
              for r, c, f in zip(result.results, result.clusters, files)]
    guided_mapping = matched(guided, gts, params.clusters, names)
    stems = [f.stem for f in files]
    rows = [stems.index(s) for s in args.stems] if args.stems else pick_rows(stems, args.rows)
    denoised: dict[int, np.ndarray] = {}
    if args.denoised is not None:
        denoised = {i: read_array(args.denoised / f"{stems[i]}.png") for i in range(len(files))
                    if (args.denoised / f"{stems[i]}.png").exists()}
    titles = ["image", "ground truth", "partitions", "segments",
              f"pseudo mask\n{scores(pseudo, gts, params.clusters, names)}",
              f"guided edges\n{scores(guided, gts, params.clusters, names)}"]
    if denoised:
        titles.append("de-noised")
        k = int(max(m.max() for m in denoised.values())) + 1
        denoised_mapping = matched(list(denoised.values()), [gts[i] for i in denoised], k, names)
    fig, axes = plt.subplots(len(rows), len(titles), figsize=(2.6 * len(titles),
                                                              2.1 * len(rows)), squeeze=False)
    for r, index in enumerate(rows):
        res = result.results[index]
        shape = res.shape
        panels = [
            read_image(files[index]),
            colours[gts[index]],
            paint_ids(upsample_nearest(res.partition, shape)),
            paint_ids(upsample_nearest(res.segments.valid, shape), zero_white=True),
            paint_clusters(pseudo[index], mapping, colours),
            paint_clusters(guided[index], guided_mapping, colours),
        ]
        if denoised:
            panels.append(paint_clusters(denoised[index], denoised_mapping, colours)
                          if index in denoised else np.zeros((*shape, 3), np.uint8))
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
        axes[r, 0].set_ylabel(stems[index], fontsize=8)
    swatches = [*colours[: len(names)], GREY, WHITE]
    legend = [plt.Rectangle((0, 0), 1, 1, facecolor=c / 255, edgecolor="k", linewidth=0.5)
              for c in swatches]
    fig.legend(legend, [*names, "unmatched cluster", "unlabelled / noise"], loc="lower center",
               ncol=len(swatches), fontsize=8, frameon=False)
    fig.suptitle(f"DatUS, {params.model} T={params.resolution} K={params.clusters}"
                 f" affinity={params.affinity} embedding={params.embedding}"
                 f" norm={params.embedding_norm}", fontsize=9)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
