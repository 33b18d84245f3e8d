"""Writes the tutorial notebooks from the cell sources below (outputs stay out of git).

Run ``python tutorials/make_notebooks.py`` after editing a tutorial here; the tests execute the
.ipynb files it writes.
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent

PRUNING = [
    new_markdown_cell(
        "# 1. Pruning a CNN with patterns\n\n"
        "This notebook prunes a small VGG-style CNN on Fashion-MNIST the PatDNN way: every kept 3x3 kernel\n"
        "keeps one of 8 four-tap **patterns** (centre included), and a layer keeps only 1/3.6 of its kernels\n"
        "(**connectivity**). The settings below are small so it runs in a few minutes on 2 CPU cores;\n"
        "`tvm-pattern demo` runs the full recipe on all 60 000 training images."
    ),
    new_code_cell(
        "%matplotlib inline\n"
        "import matplotlib.pyplot as plt\n"
        "import torch\n"
        "from IPython.display import display\n\n"
        "from tvm_pattern import data, models, plots\n"
        "from tvm_pattern.library import PatternLibrary\n"
        "from tvm_pattern.pruning import PruneConfig, extract_library, prune\n"
        "from tvm_pattern.projection import project_patterns\n"
        "from tvm_pattern.training import evaluate, train\n\n"
        "TRAIN_IMAGES = 12_000  # a subset keeps the notebook quick; accuracy is a bit lower than the demo's\n"
        "DENSE_EPOCHS = 2\n"
        "torch.manual_seed(0)\n"
        "torch.set_num_threads(2)\n"
        "full = data.load('train')\n"
        "train_split = data.Split(full.images[:TRAIN_IMAGES], full.labels[:TRAIN_IMAGES])\n"
        "test_split = data.load('test')\n"
        "print(len(train_split.labels), 'training images,', len(test_split.labels), 'test images')"
    ),
    new_markdown_cell("## Train the dense model"),
    new_code_cell(
        "dense = models.build('vgg-small')\n"
        "train(dense, train_split, DENSE_EPOCHS, desc='dense')\n"
        "print(f'dense accuracy: {evaluate(dense, test_split):.2%}')"
    ),
    new_markdown_cell(
        "## The pattern library\n\n"
        "For every prunable kernel (3x3, `groups=1`, not the first layer) we find the 4-tap pattern that keeps\n"
        "the most of its L2 norm, and keep the 8 patterns that win most often. Dark cells are kept taps; the\n"
        "percentage is the share of kernels for which that pattern was the best of all 56 candidates."
    ),
    new_code_cell(
        "library = extract_library(dense, k=8, n=4)\n"
        "fig = plots.library_figure(library)\n"
        "display(fig)"
    ),
    new_markdown_cell(
        "## Extended ADMM, hard pruning, masked retraining\n\n"
        "`prune` runs two stages from the dense model: patterns only, then patterns + connectivity. Each stage\n"
        "trains with the ADMM penalty pulling the weights towards both constraint sets, prunes with the\n"
        "projections' masks, and retrains with the masks held (pruned weights and optimiser state stay zero)."
    ),
    new_code_cell(
        "config = PruneConfig(patterns=8, connectivity=3.6, admm_epochs=0.5, retrain_epochs=1.0)\n"
        "result = prune(dense, train_split, test_split, config)"
    ),
    new_markdown_cell("## Kernels before and after (features.7, the first 8 kernels of its first filter)"),
    new_code_cell(
        "before = dense.features[7].weight.detach().numpy()[0]\n"
        "after = result.model.features[7].weight.detach().numpy()[0]\n"
        "display(plots.kernels_figure(before, after))\n"
        "nonzero = (after.reshape(-1, 9) != 0).sum(1)\n"
        "print('taps kept per kernel of that filter:', nonzero.tolist())"
    ),
    new_markdown_cell(
        "## Feature maps of one image: dense versus pattern-projected first layer\n\n"
        "The papers call pattern sparsity *image enhancing*: the library's shapes resemble Gaussian or\n"
        "Laplacian-of-Gaussian filters. Here the first layer's kernels (dense in the recipe) are projected onto\n"
        "a library taken from that layer, without retraining, and we look at the first 8 feature maps."
    ),
    new_code_cell(
        "conv = dense.features[0]\n"
        "kernels = conv.weight.detach().reshape(-1, 3, 3).numpy()\n"
        "first_library = torch.from_numpy(PatternLibrary.extract(kernels, k=8).patterns)\n"
        "image = torch.from_numpy(test_split.images[:1])\n"
        "with torch.no_grad():\n"
        "    dense_maps = torch.nn.functional.conv2d(image, conv.weight, padding=1)[0]\n"
        "    pattern_maps = torch.nn.functional.conv2d(\n"
        "        image, project_patterns(conv.weight, first_library), padding=1)[0]\n"
        "fig, axes = plt.subplots(3, 8, figsize=(10, 4))\n"
        "axes[0][0].imshow(image[0, 0], cmap='gray')\n"
        "axes[0][0].set_title(data.CLASSES[test_split.labels[0]], fontsize=8)\n"
        "for col in range(8):\n"
        "    axes[1][col].imshow(dense_maps[col], cmap='gray')\n"
        "    axes[2][col].imshow(pattern_maps[col], cmap='gray')\n"
        "for ax in axes.flat:\n"
        "    ax.set_xticks([]); ax.set_yticks([])\n"
        "axes[1][0].set_ylabel('dense', fontsize=8); axes[2][0].set_ylabel('patterns', fontsize=8)\n"
        "fig.tight_layout()\n"
        "plt.show()\n"
        "diff = (dense_maps - pattern_maps).norm() / dense_maps.norm()\n"
        "print(f'relative change of the feature maps: {diff:.1%}')"
    ),
    new_markdown_cell(
        "What the pictures show, honestly: the pattern-projected maps keep the edges and shapes of the dense\n"
        "ones (most of a kernel's norm sits in its best 4 taps), with a visible but moderate change. Whether this\n"
        "*enhances* the image is a judgement call; the accuracy table below is the measurable part."
    ),
    new_markdown_cell("## Accuracy"),
    new_code_cell(
        "rows = [('dense', result.dense_accuracy), ('patterns', result.pattern_accuracy),\n"
        "        ('patterns + connectivity', result.final_accuracy)]\n"
        "for name, acc in rows:\n"
        "    print(f'{name:<25} {acc:7.2%}  {100 * (acc - result.dense_accuracy):+.2f} pts')\n"
        "for layer in result.layers:\n"
        "    print(layer['name'], layer['kept_kernels'], '/', layer['total_kernels'],\n"
        "          'pruned' if layer['pruned'] else 'dense: ' + layer['reason'])\n"
        "assert result.final_accuracy > 0.5"
    ),
]


def write(name: str, cells: list) -> Path:
    notebook = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
    path = HERE / name
    nbformat.write(notebook, path)
    return path


if __name__ == "__main__":
    print(write("01_pruning_with_patterns.ipynb", PRUNING))
