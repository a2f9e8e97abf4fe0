"""Builds notebooks/01_progressive_training.ipynb (run: python notebooks/build/build_01.py). Edit here, not the JSON."""

from _notebook import code, install_cell, md, write

cells = [
    md("""# 01 · Progressive training that survives the session limit

Press **Run all** and walk away. Before the session's time limit the notebook saves and stops cleanly; press
**Run all** in the next session and it continues from the newest complete checkpoint, with the same result as a run
that never stopped. Along the way it shows progress, a live figure and GPU/RAM/time; at the end it writes plots, a
Markdown report, logs, and exports of the model (TorchScript, `torch.export`, ONNX when installed).

Sections: configuration · install · persistence · data · model · auto-resume and training · results."""),
    md("## Configuration\nThe parameters cell (tagged `parameters` for papermill). `SMOKE=True` shrinks everything "
       "to a run of about half a minute on two CPU cores."),
    code("""KIT_SOURCE = None                # where to install atheria_kit from when it is missing (see the next cell)
EXPERIMENT_NAME = "btc_direction_gru"
MAX_TRAINING_HOURS = 10          # this session's cap; the platform's own limit applies too
MAX_TRAINING_SECONDS = None      # exact cap in seconds (demos); overrides MAX_TRAINING_HOURS
TOTAL_EPISODES = 400
SAVE_EVERY_EPISODES = 10
DRIVE_SYNC_EVERY = 50            # 0 turns the remote copy off (Kaggle: /kaggle/working persists)
KEEP_BEST_N = 5
AUTO_RESUME = True
REMOTE = None                    # a folder or fsspec URL for the persistent copy (None: Drive on Colab)
OUTPUT_ROOT = None               # None: /content/atheria, /kaggle/working/atheria or ./runs
DATA = "sample"                  # "sample" (real BTC/ETH/BNB 1h bars shipped with the kit), "synthetic", or a CSV/Parquet path
SYMBOL = "BTCUSDT"
WINDOW = 64
BATCH_SIZE = 256
STEPS_PER_EPISODE = 40
SEED = 0
LIVE_VIEW = "auto"               # "widget", "text" (headless) or "off"
NPROCS = "auto"                  # data-parallel processes: auto is one per GPU (2 on Kaggle GPU T4 x2), 1 this kernel
SMOKE = False""", metadata={"tags": ["parameters"]}),
    md("## Install\nInstalls the kit when this runtime does not have it (Colab, Kaggle) and does nothing when it "
       "does. With `KIT_SOURCE = None` it installs the newest `atheria_kit-*.whl` found in Google Drive "
       "(`MyDrive/atheria/`), in the datasets attached to a Kaggle notebook, or in the working folder; when there is "
       "none it says how to get one."),
    install_cell(),
    code("""import atheria_kit as ak

if SMOKE:
    TOTAL_EPISODES, WINDOW, BATCH_SIZE, STEPS_PER_EPISODE = min(TOTAL_EPISODES, 16), 24, 64, 4
config = ak.SessionConfig.from_params(globals(), root=OUTPUT_ROOT, remote=REMOTE, seed=SEED,
                                      monitor="val_accuracy", mode="max", plot_every=5 if SMOKE else 10)
env = ak.detect_environment()
print(env.kind, "| GPUs:", [g.name for g in env.gpus] or "none", "| session limit:", env.session_limit_seconds)"""),
    md("## Persistence\nOn Colab, Drive is mounted and checkpoints are copied there every `DRIVE_SYNC_EVERY` "
       "episodes (fast local disk first, Drive second). On Kaggle, `/kaggle/working` persists in a saved version; "
       "set `DRIVE_SYNC_EVERY = 0`. See `docs/persistence.md`."),
    code("""if env.kind == "colab" and config.drive_sync_every > 0 and env.drive_dir is None:
    ak.mount_drive()"""),
    md("## Data\nWindows of OHLCV bars; the label is whether the next bar closes higher. The shipped sample is "
       "real Binance data (see `atheria_kit/data/SOURCES.md`); `DATA='synthetic'` uses the seeded generator."),
    code("""from atheria_kit.market.ohlcv import load_ohlcv, sample_path
from atheria_kit.market.synthetic import synthetic_ohlcv
from atheria_kit.market.sequence_data import make_direction_windows

if DATA == "synthetic":
    bars = synthetic_ohlcv(20_000, seed=SEED)
else:
    bars = load_ohlcv(sample_path(SYMBOL) if DATA == "sample" else DATA)
data = make_direction_windows(bars, window=WINDOW, max_samples=3_000 if SMOKE else 0)
print(f"{len(bars)} bars ({'synthetic' if bars.attrs.get('synthetic') else bars.attrs.get('source')}), "
      f"{len(data.x_train)} train / {len(data.x_val)} validation windows")"""),
    md("## Model\n**Replace these two functions to train your own model**: `build_model` returns the module, "
       "`train_one_episode` trains it for one episode and returns the metrics to log (a `loss` at least)."),
    code("""import torch
from torch import nn


def build_model(n_features: int) -> nn.Module:
    class DirectionGRU(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(n_features, 32, batch_first=True)
            self.head = nn.Sequential(nn.Dropout(0.1), nn.Linear(32, 1))

        def forward(self, x):
            out, _ = self.gru(x)
            return self.head(out[:, -1]).squeeze(-1)

    return DirectionGRU()


def train_one_episode(model, optimizer, scaler, generator, device) -> dict:
    model.train()
    losses = []
    for _ in range(STEPS_PER_EPISODE):
        idx = torch.randint(len(data.x_train), (BATCH_SIZE,), generator=generator)
        x, y = data.x_train[idx].to(device), data.y_train[idx].to(device)
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            loss = nn.functional.binary_cross_entropy_with_logits(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        logits = model(data.x_val.to(device))
        val_loss = nn.functional.binary_cross_entropy_with_logits(logits, data.y_val.to(device)).item()
        val_acc = ((logits > 0).float() == data.y_val.to(device)).float().mean().item()
    return {"loss": sum(losses) / len(losses), "val_loss": val_loss, "val_accuracy": val_acc}"""),
    md("## Auto-resume and training\n`restore` loads the newest valid checkpoint when one exists (nothing to "
       "resume on a first run is fine). `episodes()` stops by itself when the next episode and a final save would "
       "no longer fit in the session.\n\nWith two GPUs (Kaggle: Settings → Accelerator → **GPU T4 x2**) "
       "`ak.launch` runs `train` once per GPU, data-parallel: each rank draws its own batches, rank 0 saves and "
       "reports, and every rank stops at the same episode; a run saved on two GPUs resumes on one and the other "
       "way round (see `docs/distributed.md`). No cell before this one may use the GPU: the ranks are forked from "
       "this kernel. With one GPU or none, `train` simply runs here."),
    code("""def train():
    session = ak.TrainingSession(config, environment=env)
    device = session.device
    rank = ak.RankContext.current().rank
    ak.seed_everything(SEED)
    model = build_model(data.n_features).to(device)
    ddp = nn.parallel.DistributedDataParallel(model) if ak.RankContext.current().distributed else model
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=3e-3, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=TOTAL_EPISODES)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    gens = ak.SeededGenerators(SEED + rank)  # each rank draws its own batches

    # Prints where the run stands: a new run, resumed from which checkpoint, or already complete.
    session.restore(model=ddp, optimizer=optimizer, scheduler=scheduler, scaler=scaler, generators=ak.PerRank(gens))
    for episode in session.episodes():
        metrics = train_one_episode(ddp, optimizer, scaler, gens.torch, device)
        scheduler.step()
        session.log(**metrics)
    return session.finish(model=model, example_input=data.x_val[:8].to(device))


result = ak.launch(train, nprocs=NPROCS)"""),
    md("## Results\n`finish()` (at the end of `train`) made the final save and sync, the plots, the Markdown report "
       "and (once all episodes are done) the exports, each verified by loading it in a fresh process. The session "
       "has already printed how it ended and how to continue; below are the report and the end-of-run plots."),
    code("""print("report:", result.report)
for e in result.exports:
    print(f"export {e['format']:>12}: {e['status']}  max abs err {e['max_abs_err']}")"""),
    code("""from IPython.display import Markdown, display
display(Markdown(result.report.read_text().split("## Plots")[0]))
result.show()  # the end-of-run plots, each with its caption (also saved as PNGs beside the report)"""),
]
write(cells, "01_progressive_training.ipynb")
