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
        "from tvm_pattern.prune import data, models, plots\n"
        "from tvm_pattern.prune.projection import project_patterns\n"
        "from tvm_pattern.prune.recipe import PruneConfig, extract_library, prune\n"
        "from tvm_pattern.prune.training import evaluate, train\n"
        "from tvm_pattern.sparsity.library import PatternLibrary\n\n"
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
        "for layer in result.layers:  # every conv and linear layer: its type, density, or why it stayed dense\n"
        "    print(f\"{layer['name']:<14} {layer['type']:<10} density {layer['density']:.3f}\",\n"
        "          'pruned' if layer['pruned'] else 'dense: ' + layer['reason'])\n"
        "assert result.final_accuracy > 0.5"
    ),
]

COMPILING = [
    new_markdown_cell(
        "# 2. Compiling a pattern-pruned model with Relax\n\n"
        "We prune a small CNN (quickly, on a subset), import its ONNX export into TVM's Relax IR, put the\n"
        "`PatternSparseConv2d` pass in a pipeline, compile for this CPU, check the result against PyTorch and\n"
        "compare per-layer latency: PyTorch's dense conv2d versus the pattern-sparse kernel."
    ),
    new_code_cell(
        "%matplotlib inline\n"
        "import tempfile, time\n"
        "from pathlib import Path\n\n"
        "import matplotlib.pyplot as plt\n"
        "import numpy as np\n"
        "import torch\n"
        "import tvm\n\n"
        "from tvm_pattern import compiler\n"
        "from tvm_pattern.prune import artifacts, data, models\n"
        "from tvm_pattern.prune.recipe import PruneConfig, prune\n"
        "from tvm_pattern.prune.training import train\n"
        "from tvm_pattern.sparse_conv import sparse_conv2d\n"
        "from tvm_pattern.sparsity.format import pack\n"
        "from tvm_pattern.sparsity.library import PatternLibrary\n"
        "from tvm_pattern.targets import resolve_target\n"
        "from tvm_pattern.transform import PatternSparseConv2d\n\n"
        "torch.manual_seed(0)\n"
        "torch.set_num_threads(2)\n"
        "full, test_split = data.load('train'), data.load('test')\n"
        "train_split = data.Split(full.images[:8000], full.labels[:8000])\n"
        "dense = models.build('vgg-small')\n"
        "train(dense, train_split, 1, desc='dense')\n"
        "result = prune(dense, train_split, test_split, PruneConfig(admm_epochs=0.5, retrain_epochs=0.5))\n"
        "out = Path(tempfile.mkdtemp())\n"
        "example = torch.from_numpy(test_split.images[:1])\n"
        "artifacts.save_prune_outputs(out, result.model, example, result.library, result.masks, {})\n"
        "print(sorted(p.name for p in out.iterdir()))"
    ),
    new_markdown_cell(
        "## Import, rewrite, compile\n\n"
        "`PatternSparseConv2d` is an ordinary `tvm.ir.transform` module pass. With `patterns.json` it checks\n"
        "every 3x3 conv against the library; `strict=True` fails on an eligible conv that does not fit. Its\n"
        "`summary` says what happened to each conv, and the batch-norm and ReLU that follow a conv become the\n"
        "kernel's epilogue."
    ),
    new_code_cell(
        "mod = compiler.import_onnx(out / 'model.onnx')\n"
        "sparse = PatternSparseConv2d(out / 'patterns.json', strict=True)\n"
        "target = resolve_target('x86')\n"
        "with target:\n"
        "    mod = tvm.transform.Sequential([sparse])(mod)\n"
        "for report in sparse.summary:\n"
        "    print(report)\n"
        "model = compiler.CompiledModel(compiler.build(mod, target))"
    ),
    new_markdown_cell("## Same answers as PyTorch"),
    new_code_cell(
        "images = test_split.images[:300]\n"
        "ours = np.stack([model(x[None])[0] for x in images])\n"
        "with torch.no_grad():\n"
        "    reference = result.model.eval()(torch.from_numpy(images)).numpy()\n"
        "print('max |difference|:', float(np.abs(ours - reference).max()))\n"
        "print('same prediction on', float((ours.argmax(1) == reference.argmax(1)).mean()) * 100, '% of images')\n"
        "np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4)"
    ),
    new_markdown_cell(
        "## Per-layer latency\n\n"
        "Each pruned conv on its own: PyTorch's dense conv2d on the pruned weights (timed first: TVM's thread\n"
        "pool spins after use and would slow PyTorch's), then the pattern-sparse kernel generated for that layer\n"
        "by `sparse_conv2d`. The layers of this 28x28 model are tiny, so the times are microseconds; the\n"
        "224x224 VGG-16 figures come from `tvm-pattern bench`."
    ),
    new_code_cell(
        "shapes = {}\n"
        "convs = {n: m for n, m in result.model.named_modules() if n in result.masks}\n"
        "hooks = [m.register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, tuple(i[0].shape)))\n"
        "         for n, m in convs.items()]\n"
        "with torch.no_grad():\n"
        "    result.model(example)\n"
        "for h in hooks:\n"
        "    h.remove()\n\n"
        "def median_us(fn, repeats=300):\n"
        "    for _ in range(20):\n"
        "        fn()\n"
        "    times = []\n"
        "    for _ in range(repeats):\n"
        "        start = time.perf_counter(); fn(); times.append(time.perf_counter() - start)\n"
        "    return 1e6 * float(np.median(times))\n\n"
        "torch_us = {}\n"
        "with torch.no_grad():\n"
        "    for name, conv in convs.items():\n"
        "        x = torch.randn(shapes[name])\n"
        "        torch_us[name] = median_us(lambda: torch.nn.functional.conv2d(x, conv.weight, padding=1))\n"
        "time.sleep(0.5)\n\n"
        "library = PatternLibrary.load(out / 'patterns.json')\n"
        "sparse_us = {}\n"
        "for name, conv in convs.items():\n"
        "    kernel = sparse_conv2d(pack(conv.weight.detach().numpy(), library), shapes[name], target=target)\n"
        "    fn = tvm.compile(tvm.IRModule({'main': kernel.func}), target=target)['main']\n"
        "    dev = tvm.cpu()\n"
        "    args = [tvm.runtime.tensor(np.random.rand(*shapes[name]).astype('float32'), dev),\n"
        "            *[tvm.runtime.tensor(a, dev) for a in kernel.arrays],\n"
        "            tvm.runtime.tensor(np.zeros(kernel.out_shape, 'float32'), dev)]\n"
        "    sparse_us[name] = median_us(lambda: fn(*args))\n\n"
        "names = list(convs)\n"
        "fig, ax = plt.subplots(figsize=(6, 3))\n"
        "pos = np.arange(len(names))\n"
        "ax.bar(pos - 0.2, [torch_us[n] for n in names], 0.4, label='PyTorch dense')\n"
        "ax.bar(pos + 0.2, [sparse_us[n] for n in names], 0.4, label='TVM pattern-sparse')\n"
        "ax.set_xticks(pos, names)\n"
        "ax.set_ylabel('median latency (us)')\n"
        "ax.legend()\n"
        "plt.show()\n"
        "for n in names:\n"
        "    print(f'{n}: {torch_us[n]:.1f} us dense, {sparse_us[n]:.1f} us sparse, {torch_us[n] / sparse_us[n]:.2f}x')"
    ),
]


TUNING = [
    new_markdown_cell(
        "# 3. Tuning over RPC, on an (emulated) phone\n\n"
        "Every pattern-sparse layer is generated from a template whose knobs (register block, vector lanes,\n"
        "parallel chunks, unrolling, edge peeling) are MetaSchedule samples. `tvm_pattern.tune` searches them with\n"
        "MetaSchedule's evolutionary search and XGBoost cost model, measuring candidates on whatever devices are\n"
        "registered with an RPC tracker under a key, and writes MetaSchedule's JSON database;\n"
        "`compile_file(..., database=...)` (`tvm-pattern compile --db`) builds with each layer's best schedule.\n\n"
        "There is no phone here, so this notebook starts an **emulated aarch64 phone**: Debian's arm64 Python with\n"
        "TVM's aarch64 runtime under qemu-user, serving TVM RPC (`tvm_pattern.phone`; set-up is cached in\n"
        "`~/.cache/tvm-pattern/phone`). Times measured under emulation say nothing about a real phone: here they\n"
        "only show the machinery. The last section lists the steps for a real Android phone."
    ),
    new_code_cell(
        "%matplotlib inline\n"
        "import tempfile\n"
        "from pathlib import Path\n\n"
        "import matplotlib.pyplot as plt\n"
        "import numpy as np\n"
        "import torch\n"
        "import tvm\n"
        "from torch import nn\n"
        "from tvm import relax\n\n"
        "from tvm_pattern import compiler, rpc, tune\n"
        "from tvm_pattern.phone import EmulatedPhone\n"
        "from tvm_pattern.prune.artifacts import export_onnx\n"
        "from tvm_pattern.prune.projection import kept_kernels, project_connectivity, project_patterns\n"
        "from tvm_pattern.schedules import space\n"
        "from tvm_pattern.sparsity.library import PatternLibrary, candidate_patterns\n\n"
        "TRIALS = 6  # per layer; real jobs use hundreds\n"
        "torch.manual_seed(0)\n"
        "work = Path(tempfile.mkdtemp())"
    ),
    new_markdown_cell(
        "## A small pattern-pruned model\n\n"
        "Two 3x3 convs projected onto 8 four-tap patterns and onto 1/3.6 of their kernels (what ADMM training\n"
        "converges to; notebook 1 does the real pruning), exported to ONNX."
    ),
    new_code_cell(
        "library = PatternLibrary(candidate_patterns(4)[:8])\n"
        "model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())\n"
        "patterns = torch.from_numpy(library.patterns.astype(np.float32))\n"
        "with torch.no_grad():\n"
        "    for conv in (model[0], model[2]):\n"
        "        w = project_patterns(conv.weight, patterns)\n"
        "        conv.weight.copy_(project_connectivity(w, kept_kernels(w.shape[0] * w.shape[1], 3.6)))\n"
        "model.eval()\n"
        "x = torch.randn(1, 8, 20, 20)\n"
        "onnx_path = work / 'model.onnx'\n"
        "export_onnx(model, x, onnx_path)\n"
        "with torch.no_grad():\n"
        "    expected = model(x).numpy()\n"
        "print(onnx_path, expected.shape)"
    ),
    new_markdown_cell(
        "## A tracker and the phone\n\n"
        "`rpc.Tracker` runs TVM's tracker; the phone's RPC server registers with it under the key `phone`.\n"
        "Several servers under one key share a tuning job (one runner worker each): that is how a job scales out\n"
        "to a fleet of phones."
    ),
    new_code_cell(
        "tracker = rpc.Tracker().start()\n"
        "phone = EmulatedPhone()\n"
        "phone.setup()\n"
        "server = phone.server(tracker=tracker.address, key='phone').start()\n"
        "tracker_address = '{}:{}'.format(*tracker.address)\n"
        "print('tracker at', tracker_address, '->', rpc.tracker_servers(tracker.address))"
    ),
    new_markdown_cell(
        "## Tune\n\n"
        "The same as `tvm-pattern tune model.onnx --target arm --trials 6 --work-dir DIR --tracker HOST:PORT\n"
        "--key phone`. Builders cross-compile for aarch64 on this machine; the phone runs each candidate with the\n"
        "layer's real index arrays. The first candidate of each layer is the untuned template, so the result is\n"
        "never slower than the default. Rerunning the same job continues it and measures nothing twice."
    ),
    new_code_cell(
        "db_dir = work / 'tuned'\n"
        "results = tune.tune_file(onnx_path, 'arm', db_dir, TRIALS, tracker_address, 'phone',\n"
        "                         trials_per_iter=3, population=32, timeout=120, progress=False)\n"
        "print(sorted(p.name for p in db_dir.iterdir()))"
    ),
    new_markdown_cell(
        "## What the search measured\n\n"
        "Each record in `database_tuning_record.json` is one measured schedule: its trace (the sampled knobs) and\n"
        "its run times. Each bar is one measured schedule, labelled with its register block; the gray one is the\n"
        "untuned template. Emulated times: only their order within one run is meaningful, and not for a phone."
    ),
    new_code_cell(
        "database = tune.open_database(db_dir)\n"
        "tasks = tune.extract_tasks(compiler.import_onnx(onnx_path), 'arm')\n"
        "fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.2), squeeze=False)\n"
        "for ax, task in zip(axes[0], tasks):\n"
        "    template = space.template(task.mod['main'])\n"
        "    workload = database.commit_workload(task.mod)\n"
        "    records = [r for r in database.get_all_tuning_records() if r.workload.same_as(workload)]\n"
        "    knobs = [space.knobs(r.as_measure_candidate().sch.mod['main']) for r in records]\n"
        "    times = [1e3 * float(np.median([float(t) for t in r.run_secs])) for r in records]\n"
        "    labels = ['{}x{}'.format(*template['blocks'][k['block']]) for k in knobs]\n"
        "    colors = ['tab:gray' if k == template['knobs'] else 'tab:blue' for k in knobs]\n"
        "    ax.bar(range(len(times)), times, color=colors)\n"
        "    ax.set_xticks(range(len(times)), labels, fontsize=8)\n"
        "    ax.set_title(task.name.split('_arm_cpu_')[1], fontsize=8)\n"
        "    ax.set_xlabel('register block rows x columns (gray: untuned)')\n"
        "    ax.set_ylabel('emulated run time (ms)')\n"
        "plt.tight_layout()\n"
        "plt.show()\n"
        "best = {k: v for k, v in knobs[int(np.argmin(times))].items()}\n"
        "print('last layer: best knobs', best, 'untuned', template['knobs'])"
    ),
    new_markdown_cell(
        "## Apply the database, run on the phone\n\n"
        "`compile_file(..., database=db_dir)` replays each layer's best trace and generates the kernel its knobs\n"
        "select; the library is linked with the aarch64 cross compiler, uploaded, and run by the Relax VM on the\n"
        "phone. Its answers must equal PyTorch's."
    ),
    new_code_cell(
        "reports = []\n"
        "lib_path = compiler.compile_file(onnx_path, 'arm', work / 'model_arm.so', reports=reports, database=db_dir)\n"
        "for report in reports:\n"
        "    print(report)\n"
        "remote = server.connect()\n"
        "remote.upload(str(lib_path))\n"
        "dev = remote.cpu()\n"
        "vm = relax.VirtualMachine(remote.load_module(lib_path.name), dev)\n"
        "got = vm['main'](tvm.runtime.tensor(x.numpy(), dev)).numpy()\n"
        "print('max |difference| from PyTorch:', float(np.abs(got - expected).max()))\n"
        "np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)\n"
        "del vm, remote\n"
        "server.stop()\n"
        "tracker.stop()"
    ),
    new_markdown_cell(
        "## On a real Android phone\n\n"
        "1. Install the Android NDK and `export ANDROID_NDK_HOME=/path/to/ndk` (or `TVM_NDK_CC` = its\n"
        "   `aarch64-linux-android28-clang++`): builders and `compile` then link with it instead of Debian's\n"
        "   glibc cross compiler.\n"
        "2. Start a tracker reachable from the phone: `python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port 9190`\n"
        "   (over USB: `adb reverse tcp:9190 tcp:9190`).\n"
        "3. Build and install TVM's RPC app (`apps/android_rpc` in TVM 0.27's source tree) and connect it to the\n"
        "   tracker with the key `android`; check with `python -m tvm.exec.query_rpc_tracker --port 9190`.\n"
        "4. `tvm-pattern tune model.onnx --target arm --trials 256 --work-dir tuned --tracker HOST:9190 \\`\n"
        "   `--key android` (`--target mali` for the GPU; several phones under one key share the job).\n"
        "5. `tvm-pattern compile model.onnx --target arm --db tuned --out model.so`, then upload and run it as above."
    ),
]


def write(name: str, cells: list) -> Path:
    for i, cell in enumerate(cells):
        cell["id"] = f"cell-{i:02d}"  # stable ids: rewriting a notebook changes only what changed
    notebook = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
    path = HERE / name
    nbformat.write(notebook, path)
    return path


if __name__ == "__main__":
    print(write("01_pruning_with_patterns.ipynb", PRUNING))
    print(write("02_compiling_with_relax.ipynb", COMPILING))
    print(write("03_tuning_over_rpc.ipynb", TUNING))
