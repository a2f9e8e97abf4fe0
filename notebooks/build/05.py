"""Build notebooks/05_finetune_with_trainer.ipynb (run: .venv/bin/python notebooks/build/05.py).

A fine-tune with the Hugging Face ``Trainer``, made to survive the session limit by one line
(``atheria_kit.integrations.huggingface.prepare``). Written without outputs.
"""

from _notebook import code, install_cell, md, write

cells = [
    md("# 05 Fine-tune with the Hugging Face `Trainer`, across sessions\n"
       "A plain `transformers.Trainer` fine-tune of a causal language model (optionally with a LoRA adapter), plus "
       "one line: `trainer.train(resume_from_checkpoint=prepare(trainer, ...))`. Press **Run all** and walk away: "
       "before the session's limit the run saves a checkpoint and stops cleanly; press **Run all** in the next "
       "session and it continues from the newest *verified* checkpoint folder, downloaded from Drive on a fresh VM. "
       "Every `checkpoint-N` folder is sealed (sizes and sha256 of its files) once the Trainer has finished it, so "
       "a folder half-written when a session died is never resumed from. See `docs/integrations.md`."),
    code("KIT_SOURCE = None           # where to install atheria_kit from when it is missing (see the next cell)\n"
         "RUN_NAME = \"finetune_trainer\"\n"
         "MODEL_NAME = \"distilgpt2\"   # a hub model (downloaded on Colab/Kaggle); SMOKE builds a tiny one instead\n"
         "DATASET = \"wikitext\"        # a hub dataset with a 'text' column (the `datasets` package)\n"
         "DATASET_CONFIG = \"wikitext-2-raw-v1\"\n"
         "USE_LORA = False            # True: train a LoRA adapter (peft); the Trainer then saves only the adapter\n"
         "MAX_STEPS = 3000\n"
         "SAVE_STEPS = 200\n"
         "SAVE_TOTAL_LIMIT = 2        # the Trainer's rotation; the remote keeps the same folders\n"
         "BATCH_SIZE = 8\n"
         "SEQ_LEN = 128\n"
         "LEARNING_RATE = 5e-5\n"
         "MAX_TRAINING_HOURS = None   # this session's cap (None: the platform's limit); the platform's limit applies too\n"
         "MAX_TRAINING_SECONDS = None # exact cap in seconds (demos); overrides MAX_TRAINING_HOURS\n"
         "REMOTE = None               # folder or fsspec URL for the copy (None: Drive on Colab, none elsewhere)\n"
         "OUTPUT_ROOT = None          # None: /content/atheria, /kaggle/working/atheria or ./runs\n"
         "SEED = 0\n"
         "LIVE_VIEW = \"auto\"          # \"widget\", \"text\" (headless) or \"off\"\n"
         "SMOKE = False               # smoke mode (CI): a tiny GPT-2 built from a config, synthetic tokens, CPU",
         metadata={"tags": ["parameters"]}),
    install_cell(),
    md("## Where the run lives\n"
       "The Trainer writes its `checkpoint-N` folders to fast local disk; the kit copies each sealed folder to "
       "`REMOTE` in the background (on Colab: `MyDrive/atheria/hf/<RUN_NAME>`). On Kaggle `/kaggle/working` "
       "persists in a saved version."),
    code("from pathlib import Path\n\n"
         "import torch\n"
         "import transformers\n\n"
         "from atheria_kit.integrations.huggingface import AtheriaCallback, prepare\n"
         "from atheria_kit.platform import detect_environment\n"
         "from atheria_kit.session import default_root\n"
         "from atheria_kit.sync import colab_drive_target\n\n"
         "env = detect_environment()\n"
         "output_dir = (Path(OUTPUT_ROOT) if OUTPUT_ROOT else default_root(env)) / \"hf\" / RUN_NAME\n"
         "remote = REMOTE if REMOTE else (colab_drive_target(f\"atheria/hf/{RUN_NAME}\") if env.kind == \"colab\" "
         "else None)\n"
         "print(env.kind, \"| GPUs:\", [g.name for g in env.gpus] or \"none\", \"| output:\", output_dir, "
         "\"| copy:\", getattr(remote, \"name\", remote))"),
    md("## Model and data\n"
       "`SMOKE` builds a 2-layer GPT-2 from a config and trains it on synthetic token sequences (no download). "
       "Otherwise `MODEL_NAME` and `DATASET` come from the Hugging Face hub."),
    code("transformers.set_seed(SEED)\n"
         "if SMOKE:\n"
         "    torch.set_num_threads(1)  # a tiny model on a shared CI machine: threads cost more than they give\n"
         "    MAX_STEPS, SAVE_STEPS, BATCH_SIZE, SEQ_LEN = min(MAX_STEPS, 200), 20, 8, 16\n"
         "    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(\n"
         "        vocab_size=64, n_positions=SEQ_LEN, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0))\n"
         "    start = torch.randint(0, 64, (256, 1), generator=torch.Generator().manual_seed(SEED))\n"
         "    ids = (start + torch.arange(SEQ_LEN)) % 64  # next token = previous + 1: a pattern the model can learn\n"
         "    train_data = [{\"input_ids\": row, \"labels\": row} for row in ids]\n"
         "    collate = None\n"
         "else:\n"
         "    import datasets\n\n"
         "    tokenizer = transformers.AutoTokenizer.from_pretrained(MODEL_NAME)\n"
         "    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token\n"
         "    model = transformers.AutoModelForCausalLM.from_pretrained(MODEL_NAME)\n"
         "    raw = datasets.load_dataset(DATASET, DATASET_CONFIG, split=\"train\").filter(lambda r: r[\"text\"].strip())\n"
         "    train_data = raw.map(lambda b: tokenizer(b[\"text\"], truncation=True, max_length=SEQ_LEN), batched=True,\n"
         "                         remove_columns=raw.column_names)\n"
         "    collate = transformers.DataCollatorForLanguageModeling(tokenizer, mlm=False)\n"
         "if USE_LORA:\n"
         "    import peft\n\n"
         "    model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,\n"
         "                                                       task_type=\"CAUSAL_LM\"))\n"
         "    model.print_trainable_parameters()\n"
         "print(f\"{type(model).__name__}: {sum(p.numel() for p in model.parameters() if p.requires_grad):,} \"\n"
         "      f\"trainable parameters, {len(train_data):,} training sequences\")"),
    md("## Train: the Trainer as usual, plus one line\n"
       "`prepare` attaches the kit's callback and returns the newest verified checkpoint folder (local, else the "
       "remote copy, downloaded), or `None` for a new run. The callback stops before the session's limit with a "
       "saved checkpoint and says so; it also shows progress and the loss curve."),
    code("args = transformers.TrainingArguments(\n"
         "    output_dir=str(output_dir), max_steps=MAX_STEPS, save_strategy=\"steps\", save_steps=SAVE_STEPS,\n"
         "    save_total_limit=SAVE_TOTAL_LIMIT, per_device_train_batch_size=BATCH_SIZE, learning_rate=LEARNING_RATE,\n"
         "    logging_steps=max(1, SAVE_STEPS // 10), report_to=[], seed=SEED, disable_tqdm=LIVE_VIEW != \"off\",\n"
         "    use_cpu=SMOKE or not torch.cuda.is_available())\n"
         "trainer = transformers.Trainer(model=model, args=args, train_dataset=train_data, data_collator=collate)\n"
         "if LIVE_VIEW != \"off\":\n"
         "    trainer.remove_callback(transformers.PrinterCallback)  # the kit's live view shows progress and loss\n"
         "resume = prepare(trainer, remote=remote, max_training_hours=MAX_TRAINING_HOURS,\n"
         "                 max_training_seconds=MAX_TRAINING_SECONDS, live_view=LIVE_VIEW)\n"
         "trainer.train(resume_from_checkpoint=resume)"),
    md("## Where the run stands\n"
       "Finished, or stopped at the budget (then press **Run all** in the next session). The checkpoint folders "
       "below are the Trainer's own; each one listed as verified matches its seal."),
    code("from atheria_kit.integrations.checkpoint_folders import list_folders, verify_folder\n\n"
         "callback = AtheriaCallback.of(trainer)\n"
         "print(callback.remote_line() or \"no remote copy configured\")\n"
         "for folder in list_folders(output_dir):\n"
         "    check = verify_folder(folder)\n"
         "    print(f\"{folder.name}: {'verified' if check.ok else 'NOT verified: ' + check.reason}\")\n"
         "RUN_FINISHED = trainer.state.global_step >= trainer.state.max_steps\n"
         "print(\"finished\" if RUN_FINISHED else \"stopped before the end: press Run all in the next session\")"),
]
write(cells, "05_finetune_with_trainer.ipynb")
