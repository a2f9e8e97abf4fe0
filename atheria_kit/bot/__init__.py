"""A Telegram bot that starts, watches and stops the kit's runs from a phone.

``python -m atheria_kit.bot`` long-polls Telegram's ``getUpdates`` and answers ``/train_hist``,
``/train_live``, ``/training_status``, ``/stop_training`` and ``/help`` from the configured chats only. Runs are
the real command lines (``atheria replay``, ``atheria live``) started as subprocesses, one of each kind at a time;
stop means SIGTERM, which those commands turn into a clean stop with a checkpoint. The token comes from the
environment or the platform's secret store and is never written anywhere (see ``docs/telegram.md``).

Modules: :mod:`~atheria_kit.bot.api` (the Bot API over ``requests``), :mod:`~atheria_kit.bot.commands` (parsing
and validating command text), :mod:`~atheria_kit.bot.runs` (launching, watching and stopping runs),
:mod:`~atheria_kit.bot.state` (what survives a restart of the bot), :mod:`~atheria_kit.bot.app` (the polling
loop) and :mod:`~atheria_kit.bot.cli` (the command line).
"""
