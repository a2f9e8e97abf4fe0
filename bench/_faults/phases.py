"""Phases 2-8 of the kill bench: one fault each, trials at instants chosen from the worker's events.

Every phase returns a :class:`PhaseResult`: ``survived`` counts trials where the next start resumed (or refused)
as specified, with a clear message; ``nothing_lost`` those whose final parameters equal the uninterrupted run's,
whose remote and local histories are intact and that redid no committed episode; ``steps_lost_max`` the most
committed episodes one trial had to redo (episodes that were never in a committed checkpoint are not counted:
redoing them is the design).
"""

from __future__ import annotations

import json
import random
import socket
from dataclasses import dataclass
from pathlib import Path

from bench._faults.harness import (
    LIFE_LIMIT_S,
    TOTAL,
    ForkServer,
    Life,
    PhaseResult,
    Reference,
    check_resumed_run,
    ckpt_dir,
    committed,
    copy_tree,
    fill_disk,
    flip_bit,
    metrics_path,
    mount_tmpfs,
    newest_committed,
    remote_history,
    remote_intact,
    tree_hashes,
    umount,
)

HOST = socket.gethostname()


@dataclass
class Ctx:
    """What every phase needs: the fork server, a folder, the reference run, a seeded RNG and the trial count."""

    server: ForkServer
    base: Path
    ref: Reference
    rng: random.Random
    quick: bool
    trials: int | None = None  # overrides each phase's own count
    _n: int = 0

    def dir(self, label: str) -> Path:
        self._n += 1
        return self.base / f"{self._n:04d}-{label}"

    def start(self, root: Path, *args: object, limit: float = LIFE_LIMIT_S) -> Life:
        self._n += 1
        return self.server.start(["--root", root, *map(str, args)], root.parent / f"{root.name}.life{self._n}.stderr",
                                 limit)

    def count(self, quick: int, full: int) -> int:
        return self.trials if self.trials is not None else (quick if self.quick else full)


def _log_once(root: Path) -> list[str]:
    """Problems with the run log: each episode exactly once, in order, with done = 1..TOTAL."""
    path = metrics_path(root)
    records = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.is_file() else []
    episodes = [r.get("episode") for r in records]
    if episodes != list(range(TOTAL)):
        return [f"metrics.jsonl holds episodes {episodes}, expected each of 0..{TOTAL - 1} once"]
    if [r.get("done") for r in records] != list(range(1, TOTAL + 1)):
        return [f"metrics.jsonl 'done' fields are {[r.get('done') for r in records]}"]
    return []


def _logged_episodes(root: Path) -> int:
    """Complete records in the run log (a torn last line is not a record)."""
    path = metrics_path(root)
    if not path.is_file():
        return 0
    return sum(1 for ln in path.read_bytes().split(b"\n")[:-1] if ln.strip())


def _ended_like_reference(life: Life, ref: Reference) -> bool:
    end = life.end
    return (end is not None and end[1] == "done" and end[3] == ref.final
            and all(ref.episodes.get(n) == d for n, d in life.episodes))


def _said(life: Life, *parts: str) -> bool:
    return any(all(p in line for p in parts) for line in life.said)


# ------------------------------------------------------------------------------------ 2: kill in finish()


def finish_kills(ctx: Ctx) -> PhaseResult:
    """SIGKILL at each write instant of finish(): stop on a saved episode (8) and on an unsaved one (6)."""
    res = PhaseResult("2 SIGKILL at a write instant of finish()")
    # (stop after, newest episode committed before finish): the last one is the end of a complete run
    scenarios = [(8, 8), (6, 4)] if ctx.quick else [(8, 8), (6, 4), (4, 4), (5, 4), (11, 8), (TOTAL, TOTAL)]
    per_scenario = ctx.count(3, 0)  # 0: every instant
    for stop, saved_before in scenarios:
        probe = ctx.start(ctx.dir(f"finish-probe-{stop}"), "--stop-after", stop, "--gate-finish")
        probe.finish()
        gates = [ln for ln in probe.lines if ln.startswith("GATE ")]
        if probe.returncode != 0 or probe.end is None or not gates:
            res.failures.append(f"stop at {stop}: the probe run failed: {probe.describe()}")
            continue
        own_name = f"ckpt-{stop:010d}.pt"
        if saved_before == stop and f"GATE WRITE-BEGIN {own_name}" in gates:
            res.failures.append(f"stop at {stop}: finish() rewrote the committed {own_name} under its own name")
        instants = list(range(len(gates)))
        if per_scenario and per_scenario < len(gates):
            # Always the instants around the final checkpoint's rename; the rest at random.
            renamed = next(i for i, g in enumerate(gates) if g.startswith("GATE WRITE-END ckpt-"))
            keep = {renamed - 1, renamed}
            keep |= set(ctx.rng.sample([i for i in instants if i not in keep], max(0, per_scenario - len(keep))))
            instants = sorted(keep)
        kind = "end of the run" if stop == TOTAL else "saved episode" if stop == saved_before else "unsaved episode"
        res.notes.append(f"stop at {stop} ({kind}): {len(gates)} write instants in finish(), {len(instants)} killed")
        for k in instants:
            res.trial(**_finish_kill_trial(ctx, stop, saved_before, gates, k))
    return res


def _finish_kill_trial(ctx: Ctx, stop: int, saved_before: int, gates: list[str], k: int) -> dict:
    root = ctx.dir(f"finish-{stop}-k{k}")
    life = ctx.start(root, "--stop-after", stop, "--gate-finish")
    seen: list[str] = []
    while (line := life.next_line()) is not None:
        if line.startswith("GATE "):
            seen.append(line)
            if len(seen) > k:
                life.kill()
                break
            life.go()
    life.finish()
    where = f"stop {stop}, killed at {gates[k]!r}"
    problems = []
    if seen != gates[: k + 1] or life.returncode != -9:
        problems.append(f"{where}: the kill did not land there (rc={life.returncode}, seen {seen[-1:]})")
    final_in_place = any(g.startswith("GATE WRITE-END ckpt-") for g in seen)
    committed_before = stop if final_in_place else saved_before
    expected = newest_committed(ckpt_dir(root))
    resumed = ctx.start(root)
    resumed.finish()
    problems += [f"{where}: {p}" for p in check_resumed_run(resumed, ctx.ref, expected_ready=expected)]
    problems += [f"{where}: {p}" for p in _log_once(root)]
    ready = resumed.ready or 0
    said_ok = _said(resumed, "this run is already complete") if ready == TOTAL else \
        _said(resumed, "resumed from ckpt-") if ready else _said(resumed, "starting a new run")
    if not said_ok:
        problems.append(f"{where}: no line said where the run resumed: {resumed.said}")
    return {
        "survived": resumed.ready == expected and said_ok and resumed.returncode == 0,
        "nothing_lost": _ended_like_reference(resumed, ctx.ref) and not _log_once(root),
        "steps_lost": max(0, committed_before - ready),
        "problems": problems,
    }


# ------------------------------------------------------------------------ 3: remote down at start-up


def remote_startup(ctx: Ctx) -> PhaseResult:
    """A new VM (empty local folder) whose remote (a folder with a checkpoint history) fails at start-up; then the
    remote is back and "Run all" is pressed again, in a new process or in the same one (the same kernel)."""
    res = PhaseResult("3 remote unreachable at a new VM's start-up")
    master = ctx.dir("remote-master")
    remote0 = master.with_name(master.name + "-remote")
    life = ctx.start(master, "--remote", remote0, "--stop-after", 10, "--final-sync-timeout", 60)
    life.finish()
    newest, problems = remote_intact(remote0)
    if life.end is None or newest != 10 or problems:
        res.not_run = f"the remote history could not be built (newest {newest}, {problems}): {life.describe()}"
        return res
    # The remote operations of a healthy start before training: the fault starts at one of them.
    probe_root = ctx.dir("remote-probe")
    probe = ctx.start(probe_root, "--remote", copy_tree(remote0, probe_root.with_name(probe_root.name + "-remote")),
                      "--hold-at", 10, "--final-sync-timeout", 2)
    probe.until("HOLD", "END")
    probe.kill()
    probe.finish()
    calls = (probe.first("CALLS") or ["CALLS"])[1:]
    history = next((i for i, c in enumerate(calls) if c.endswith(":manifest.json")), None)
    if probe.ready != 10 or history is None:
        res.not_run = f"a healthy start did not resume from the remote: {probe.describe()}"
        return res
    res.notes.append(f"the remote holds ckpt 4, 8, 10; a healthy start makes {len(calls)} remote operations before "
                     f"training, the history is first read at operation {history + 1} (after the remote lease is "
                     f"taken); the fault starts at operation 1, {history + 1} or a random one")
    plan = [(0, "new process"), (history, "same kernel"), (history, "new process"), (0, "same kernel")]
    lease_left = 0
    for i in range(ctx.count(2, 8)):
        kind = ("enotconn", "timeout")[i % 2]
        after, again = plan[i] if i < len(plan) else (ctx.rng.randrange(len(calls)), ("new process", "same kernel")[i % 2])
        outcome = _remote_startup_trial(ctx, remote0, kind, after, again)
        lease_left += outcome.pop("lease_left")
        res.trial(**outcome)
    if ctx.quick:
        res.notes.append(f"a remote that hangs (a stuck mount) at start-up: in the default run only (a start that "
                         f"hangs costs {HANG_LIMIT_S:.0f} s)")
    else:
        outcome = _remote_startup_trial(ctx, remote0, "hang", 0, "new process")
        lease_left += outcome.pop("lease_left")
        res.trial(**outcome)
    if lease_left:
        res.notes.append(f"{lease_left} refused start(s) left their lease.json on the remote (the release failed: "
                         f"the remote was down)")
    return res


#: A start-up with a hanging remote must end (refuse or resume) within this many seconds: the retry time of the
#: worker (1 s) plus the kit's 30 s bound on taking the remote lease, and a wide margin.
HANG_LIMIT_S = 90.0


def _remote_startup_trial(ctx: Ctx, remote0: Path, kind: str, after: int, again: str) -> dict:
    root = ctx.dir(f"remote-{kind}-{after}")
    remote = copy_tree(remote0, root.with_name(root.name + "-remote"))
    fault = root.with_name(root.name + ".fault")
    fault.write_text(f"{kind} {after}")
    where = f"{kind} from remote operation {after + 1}, then a start in the {again}"
    before, before_all = remote_history(remote), tree_hashes(remote)
    observed: dict[str, object] = {}

    def remote_back(life: Life, line: str) -> None:
        if line == "HOLD again":  # the refused process waits: look at the remote, bring it back, start again
            observed["history"] = remote_history(remote)
            observed["lease"] = tree_hashes(remote).get("lease.json")
            fault.unlink()
        life.go()

    args = ["--remote", remote, "--fault-file", fault, "--final-sync-timeout", 2]
    first = ctx.start(root, *args, *(["--again"] if again == "same kernel" else []), limit=HANG_LIMIT_S)
    first.finish(remote_back)
    problems = []
    if first.timed_out:
        problems.append(f"{where}: the start did not end within {HANG_LIMIT_S:.0f} s (killed); its last lines: "
                        f"{first.lines[-2:]}, stderr: {first.stderr[-600:]!r}")
    if "history" not in observed:  # a single attempt: the process ended with the remote still failing
        observed["history"] = remote_history(remote)
        observed["lease"] = tree_hashes(remote).get("lease.json")
        fault.unlink(missing_ok=True)
    history_same = observed["history"] == before
    lease_left = int(observed["lease"] != before_all.get("lease.json"))
    if not history_same:
        problems.append(f"{where}: the remote changed while it was failing: {_diff(before, observed['history'])}")
    refusal = first.refused
    if refusal is not None:
        clear = "RemoteUnavailableError" in refusal and str(remote) in refusal and "Run again" in refusal
        if not clear:
            problems.append(f"{where}: the refusal is not the specified one: {refusal!r}")
        if again == "same kernel":
            trained = first
            second = [ln for ln in first.lines if ln.startswith("REFUSED ")][1:]
            if second:  # refused again with the remote back: what a user does next is restart the kernel
                problems.append(f"{where}: with the remote back, the second start in the same process was refused: "
                                f"{second[0]}")
                trained = ctx.start(root, "--remote", remote, "--final-sync-timeout", 30)
                trained.finish()
                clear = False
        else:
            if first.returncode != 3:
                problems.append(f"{where}: the refused process exited with {first.returncode}, expected 3")
            trained = ctx.start(root, "--remote", remote, "--final-sync-timeout", 30)
            trained.finish()
        ok = clear and trained.ready == 10 and _said(trained, "resumed from ckpt-0000000010")
    elif first.ready is not None:  # the fault began after everything needed was read: training is legitimate
        trained, ok = first, first.ready == 10
    elif first.timed_out:  # the user interrupts the hung start and presses Run all with the remote back
        trained = ctx.start(root, "--remote", remote, "--final-sync-timeout", 30)
        trained.finish()
        ok = False
    else:
        problems.append(f"{where}: neither refused nor resumed: {first.describe()}")
        return {"survived": False, "nothing_lost": False, "steps_lost": 10, "problems": problems,
                "lease_left": lease_left}
    problems += [f"{where}: {p}" for p in check_resumed_run(trained, ctx.ref, expected_ready=10)]
    newest, damaged = remote_intact(remote)
    if damaged:
        problems.append(f"{where}: the remote's files do not match its manifest afterwards: {damaged}")
    return {
        "survived": ok and trained.returncode == 0,
        "nothing_lost": history_same and not damaged and _ended_like_reference(trained, ctx.ref),
        "steps_lost": max(0, 10 - (trained.ready or 0)) if trained.ready is not None else 0,
        "problems": problems,
        "lease_left": lease_left,
    }


def _diff(a: dict[str, str], b: dict[str, str]) -> str:
    gone = sorted(set(a) - set(b))
    new = sorted(set(b) - set(a))
    changed = sorted(k for k in set(a) & set(b) if a[k] != b[k])
    return f"removed {gone}, added {new}, changed {changed}"


# ---------------------------------------------------------------------- 4: bit flip without the manifest


def bit_flips(ctx: Ctx) -> PhaseResult:
    """One bit flipped at a random position of the newest checkpoint, manifest.json deleted."""
    res = PhaseResult("4 bit flip in the newest checkpoint, no manifest")
    master = ctx.dir("flip-master")
    life = ctx.start(master, "--stop-after", 10)
    life.finish()
    files = committed(ckpt_dir(master))
    if life.end is None or sorted(files.values()) != [4, 8, 10]:
        res.not_run = f"the run to damage did not leave checkpoints 4, 8, 10 ({files}): {life.describe()}"
        return res
    newest = max(files, key=files.get)
    size = (ckpt_dir(master) / newest).stat().st_size
    positions = []
    for i in range(ctx.count(3, 12)):
        root = copy_tree(master, ctx.dir(f"flip-{i}"))
        (ckpt_dir(root) / "manifest.json").unlink()
        offset, bit = ctx.rng.randrange(size), ctx.rng.randrange(8)
        positions.append(offset)
        flip_bit(ckpt_dir(root) / newest, offset, bit)
        expected = newest_committed(ckpt_dir(root))  # the previous good one: 8
        resumed = ctx.start(root)
        resumed.finish()
        where = f"bit {bit} of byte {offset}/{size} of {newest}"
        problems = [f"{where}: {p}" for p in check_resumed_run(resumed, ctx.ref, expected_ready=expected)]
        problems += [f"{where}: {p}" for p in _log_once(root)]
        named = newest in resumed.stderr or any(newest in line for line in resumed.said)
        if not named:
            problems.append(f"{where}: nothing said that {newest} was skipped")
        if resumed.ready == 10:
            problems.append(f"{where}: the damaged {newest} was loaded")
        res.trial(survived=resumed.ready == expected == 8 and named and resumed.returncode == 0,
                  nothing_lost=_ended_like_reference(resumed, ctx.ref) and not _log_once(root),
                  steps_lost=max(0, 8 - (resumed.ready or 0)), problems=problems)
    res.notes.append(f"flipped bytes at {sorted(positions)} of {size}; the 2 episodes after ckpt 8 that only the "
                     f"damaged file held are redone by design (not counted as lost)")
    return res


# ---------------------------------------------------------------------------- 5: dead remote at the end


FINAL_SYNC_TIMEOUT_S = 2.0
#: What the final sync may take beyond its timeout (handing the bound from one step to the next, thread joins).
SYNC_SLACK_S = 0.5


def dead_remote(ctx: Ctx) -> PhaseResult:
    """The remote dies (every operation hangs, or fails with Errno 107) during the run or just before finish()."""
    res = PhaseResult("5 remote dead at the end of the session")
    bound = FINAL_SYNC_TIMEOUT_S
    base_root = ctx.dir("dead-baseline")
    base = ctx.start(base_root, "--remote", base_root.with_name(base_root.name + "-remote"), "--stop-after", 10,
                     "--final-sync-timeout", bound)
    base.finish()
    if base.end is None or not _said(base, "remote copy is up to date"):
        res.not_run = f"a run with a healthy remote did not end up to date: {base.describe()}"
        return res
    healthy = float(base.end[4])
    healthy_sync = float((base.first("SYNC-FINISH") or ["", "0"])[1])
    # finish() = the final sync (bounded by final_sync_timeout) + the rest (final save, run log, report, plots),
    # which the dead remote must not slow down: twice its healthy time and 1 s absorb the machine's load.
    limit = bound + 2 * (healthy - healthy_sync) + 1.0
    worst, worst_sync = 0.0, 0.0
    unknown = 0
    threads: list[str] = []
    for i in range(ctx.count(2, 8)):
        kind = ("hang", "enotconn")[i % 2]
        when = "finish" if i < 2 else ctx.rng.choice(["finish", *range(1, 10)])
        outcome = _dead_remote_trial(ctx, kind, when, limit)
        worst = max(worst, outcome.pop("seconds"))
        worst_sync = max(worst_sync, outcome.pop("sync_seconds"))
        unknown += outcome.pop("unknown")
        threads += outcome.pop("threads")
        res.trial(**outcome)
    res.notes.append(f"with a dead remote the final sync took at most {worst_sync:.2f} s (bound: final_sync_timeout "
                     f"{bound:.1f} s + {SYNC_SLACK_S:.1f} s) and finish() at most {worst:.2f} s (bound {limit:.2f} s; "
                     f"with a healthy remote: {healthy:.2f} s, of which the sync {healthy_sync:.2f} s)")
    if unknown:
        res.notes.append(f"{unknown} trial(s) said the remote 'could not be read; what it holds is unknown' (the "
                         f"remote died before this session read it)")
    if threads:
        res.notes.append(f"non-daemon threads alive after finish() (would block the interpreter's exit): "
                         f"{sorted(set(threads))}")
    return res


def _dead_remote_trial(ctx: Ctx, kind: str, when: str | int, limit: float) -> dict:
    root = ctx.dir(f"dead-{kind}-{when}")
    remote = root.with_name(root.name + "-remote")
    fault = root.with_name(root.name + ".fault")
    args = ["--remote", remote, "--fault-file", fault, "--stop-after", 10, "--final-sync-timeout",
            FINAL_SYNC_TIMEOUT_S]
    args += ["--hold-finish"] if when == "finish" else ["--hold-at", when]

    def kill_the_remote(life: Life, _line: str) -> None:
        fault.write_text(f"{kind} 0")
        life.go()

    life = ctx.start(root, *args)
    life.finish(kill_the_remote)
    where = f"remote {kind} from {'finish()' if when == 'finish' else f'episode {when}'}"
    problems = []
    end = life.end
    seconds = float(end[4]) if end else float("inf")
    sync_seconds = float((life.first("SYNC-FINISH") or ["", "inf"])[1])
    in_bound = sync_seconds <= FINAL_SYNC_TIMEOUT_S + SYNC_SLACK_S and seconds <= limit
    if end is None or life.returncode != 0:
        problems.append(f"{where}: finish() did not return: {life.describe()}")
    elif not in_bound:
        problems.append(f"{where}: the final sync took {sync_seconds:.2f} s (bound {FINAL_SYNC_TIMEOUT_S:.1f} + "
                        f"{SYNC_SLACK_S:.1f} s), finish() {seconds:.2f} s (bound {limit:.2f} s)")
    if "Traceback" in life.stderr:
        problems.append(f"{where}: a traceback on stderr: {life.stderr[-1500:]}")
    described, unknown = _check_remote_line(life, root, remote)
    if described is not None:
        problems.append(f"{where}: {described}")
    threads = [t for t in (life.first("THREADS") or ["", "-"])[1].split(",") if t != "-"]
    fault.unlink()
    _, damaged = remote_intact(remote)
    if damaged:
        problems.append(f"{where}: the remote's files do not match its manifest: {damaged}")
    expected = newest_committed(ckpt_dir(root))
    again = ctx.start(root, "--remote", remote, "--final-sync-timeout", 30)  # the remote is back
    again.finish()
    problems += [f"{where}: {p}" for p in check_resumed_run(again, ctx.ref, expected_ready=expected)]
    newest_after, damaged_after = remote_intact(remote)
    if newest_after != TOTAL or damaged_after:
        problems.append(f"{where}: with the remote back, it holds {newest_after} ({damaged_after}), expected "
                        f"the final checkpoint {TOTAL}")
    return {
        "survived": end is not None and in_bound and described is None and life.returncode == 0,
        "nothing_lost": (expected == 10 and not damaged and _ended_like_reference(again, ctx.ref)
                         and newest_after == TOTAL and not damaged_after),
        "steps_lost": max(0, 10 - (again.ready or 0)),
        "problems": problems,
        "seconds": seconds,
        "sync_seconds": sync_seconds,
        "unknown": unknown,
        "threads": threads,
    }


def _check_remote_line(life: Life, root: Path, remote: Path) -> tuple[str | None, bool]:
    """Whether the printed "remote copy ..." line says what the remote really holds; (problem or None, unknown)."""
    line = next((s for s in life.said if "remote copy" in s), None)
    if line is None:
        return f"no line said what the remote holds: {life.said}", False
    if "what it holds is unknown" in line:
        return None, True
    local = {e["file"]: e for e in _manifest(ckpt_dir(root))}
    remote_entries = {e["file"]: e for e in _manifest(remote)}
    newest_remote = max(remote_entries.values(), key=lambda e: e["step"], default=None)
    if newest_remote is None:
        behind = len(local)
    else:
        behind = sum(1 for e in local.values() if e["step"] > newest_remote["step"] or (
            e["step"] == newest_remote["step"] and remote_entries.get(e["file"], {}).get("sha256") != e["sha256"]))
    if behind == 0:
        return (None if "up to date" in line else f"the remote is up to date, but the line says: {line}"), False
    want = f"{behind} checkpoint{'s' if behind != 1 else ''} behind"
    if want not in line:
        return f"the remote is {want}, but the line says: {line}", False
    if newest_remote is not None and newest_remote["file"] not in line:
        return f"the newest remote checkpoint is {newest_remote['file']}, but the line says: {line}", False
    return None, False


def _manifest(directory: Path) -> list[dict]:
    try:
        return json.loads((directory / "manifest.json").read_bytes())["checkpoints"]
    except (OSError, ValueError, KeyError):
        return []


# ------------------------------------------------------------------------------- 6: a disk that fills up


def disk_full(ctx: Ctx) -> PhaseResult:
    """A tmpfs run folder that another process fills up before a random episode; then space is freed."""
    res = PhaseResult("6 disk full mid-run (tmpfs)")
    why = mount_tmpfs(probe := ctx.dir("tmpfs-probe"), 1024)
    if why is not None:
        res.not_run = why
        return res
    umount(probe)
    wording: dict[str, int] = {}
    for i in range(ctx.count(2, 6)):
        k = 5 if i == 0 else ctx.rng.randint(1, TOTAL - 1)
        point = ctx.dir(f"tmpfs-{k}")
        why = mount_tmpfs(point, 4096)
        if why is not None:
            res.failures.append(why)
            continue
        try:
            outcome = _disk_full_trial(ctx, point, k)
        finally:
            umount(point)
        for defect in outcome.pop("wording"):
            wording[defect] = wording.get(defect, 0) + 1
        res.trial(**outcome)
    res.notes += [f"error line wording, {n} trial(s): {defect}" for defect, n in wording.items()]
    return res


def _wording(line: str) -> list[str]:
    """Defects of an error line that do not hide the fault but make it less clear (reported, not failed)."""
    defects = []
    if "(?)" in line:
        defects.append("the path that failed is shown as '(?)'")
    if "no checkpoint had been saved yet" in line and "resumes from that checkpoint" in line:
        defects.append("says 'no checkpoint had been saved yet' and 'the run resumes from that checkpoint'")
    return defects


def _disk_full_trial(ctx: Ctx, point: Path, k: int) -> dict:
    root, filler = point / "run", point / "filler.bin"

    def fill(life: Life, _line: str) -> None:
        fill_disk(filler)
        life.go()

    life = ctx.start(root, "--hold-at", k)
    life.finish(fill)
    where = f"disk full before episode {k}"
    problems = []
    end = life.end
    said_ok = _said(life, "No space left on device") and (_said(life, "Free space") or _said(life, "free space"))
    if end is None or end[1] != "error" or life.returncode != 0:
        problems.append(f"{where}: expected end reason 'error': {life.describe()}")
    if not said_ok:
        problems.append(f"{where}: no clear line naming the full disk and what to do: {life.said}")
    error_line = next((s for s in life.said if "No space left on device" in s), "")
    if "Traceback" in life.stderr:
        problems.append(f"{where}: a traceback on stderr: {life.stderr[-1500:]}")
    expected = newest_committed(ckpt_dir(root))
    filler.unlink()  # the user frees space
    again = ctx.start(root)
    again.finish()
    problems += [f"{where}: {p}" for p in check_resumed_run(again, ctx.ref, expected_ready=expected or 0)]
    problems += [f"{where}: {p}" for p in _log_once(root)]
    return {
        "survived": end is not None and end[1] == "error" and said_ok and again.ready == (expected or 0),
        "nothing_lost": _ended_like_reference(again, ctx.ref) and not _log_once(root),
        "steps_lost": max(0, (expected or 0) - (again.ready or 0)),
        "problems": problems,
        "wording": _wording(error_line),
    }


# ---------------------------------------------------------------------------- 7: two sessions, one folder


def two_sessions(ctx: Ctx) -> PhaseResult:
    """A second process on a folder in use refuses naming the holder; after the holder is SIGKILLed, a third
    takes over and finishes the run."""
    res = PhaseResult("7 two processes on one run folder")
    for i in range(ctx.count(2, 6)):
        k = ctx.rng.randint(1, TOTAL - 1)
        res.trial(**_two_sessions_trial(ctx, k, i))
    return res


def _two_sessions_trial(ctx: Ctx, k: int, i: int) -> dict:
    root = ctx.dir(f"two-{i}-{k}")
    where = f"holder held before episode {k}"
    holder = ctx.start(root, "--hold-at", k)
    problems = []
    if holder.until("HOLD", "END") != f"HOLD {k}":
        holder.kill()
        holder.finish()
        return {"survived": False, "nothing_lost": False, "steps_lost": 0,
                "problems": [f"{where}: the holder did not reach the hold: {holder.describe()}"]}
    logs = root / "logs" / "w"
    snapshot = {p.name: p.read_bytes() for p in logs.glob("*.json*")}
    second = ctx.start(root)
    second.finish()
    refused = second.refused or ""
    named = f"pid {holder.pid}" in refused and HOST in refused and "in use by another session" in refused
    if not named or second.returncode != 3 or second.ready is not None:
        problems.append(f"{where}: the second process did not refuse naming the holder: {second.describe()}")
    unchanged = {p.name: p.read_bytes() for p in logs.glob("*.json*")} == snapshot
    lease = json.loads((root / "leases" / "w.json").read_bytes())
    if not unchanged or lease.get("pid") != holder.pid:
        problems.append(f"{where}: the refused start changed the run log or the lease (lease pid {lease.get('pid')})")
    holder.kill()
    holder.finish()
    expected = newest_committed(ckpt_dir(root))
    third = ctx.start(root)
    third.finish()
    took = _said(third, f"took over the run folder from {HOST} (pid {holder.pid})")
    if not took:
        problems.append(f"{where}: the third process did not say it took over: {third.said}")
    problems += [f"{where}: {p}" for p in check_resumed_run(third, ctx.ref, expected_ready=expected or 0)]
    problems += [f"{where}: {p}" for p in _log_once(root)]
    return {
        "survived": named and unchanged and second.returncode == 3 and took and third.ready == (expected or 0),
        "nothing_lost": _ended_like_reference(third, ctx.ref) and not _log_once(root),
        "steps_lost": max(0, (expected or 0) - (third.ready or 0)),
        "problems": problems,
    }


# ---------------------------------------------------------------------------------- 8: one history


def one_history(ctx: Ctx) -> PhaseResult:
    """SIGKILL after a random episode (1 to 3 times per run); each resume must say what is redone, and the run
    log must end with each episode once."""
    res = PhaseResult("8 resume after SIGKILLs: run log")
    for i in range(ctx.count(3, 10)):
        res.trial(**_one_history_trial(ctx, i))
    return res


def _one_history_trial(ctx: Ctx, i: int) -> dict:
    root = ctx.dir(f"history-{i}")
    problems = []
    survived = True
    lost = 0
    expected: int | None = None  # where the next life must resume
    logged = 0  # episodes the run log recorded before the last kill
    kills = ctx.rng.randint(1, 3)
    for _ in range(kills):
        life = ctx.start(root)
        life.until("READY", "END", "REFUSED")
        ready = life.ready
        survived &= _check_redo(life, expected, logged, problems)
        if expected is not None:
            lost = max(lost, expected - (ready or 0))
        if ready is None or TOTAL - ready < 2:
            life.finish()
            break
        m = ctx.rng.randint(1, TOTAL - ready - 1)
        count = 0
        while (line := life.next_line()) is not None:
            if line.startswith("EPISODE "):
                count += 1
                if count == m:
                    life.kill()
                    break
        life.finish()
        expected = newest_committed(ckpt_dir(root)) or 0
        # What the run log holds, read from the file: the worker may have logged the next episode between printing
        # EPISODE m and the kill, so counting printed lines can be one short.
        logged = _logged_episodes(root)
    final = ctx.start(root)
    final.finish()
    survived &= _check_redo(final, expected, logged, problems)
    lost = max(lost, (expected or 0) - (final.ready or 0))
    problems += check_resumed_run(final, ctx.ref, expected_ready=expected)
    problems += _log_once(root)
    return {
        "survived": survived and final.returncode == 0,
        "nothing_lost": _ended_like_reference(final, ctx.ref) and not _log_once(root),
        "steps_lost": max(0, lost),
        "problems": [f"run {i}: {p}" for p in problems],
    }


def _check_redo(life: Life, expected: int | None, logged: int, problems: list[str]) -> bool:
    """A resumed life started at the newest committed checkpoint and said how many logged episodes it redoes."""
    if expected is None:
        return True
    ok = life.ready == expected
    if not ok:
        problems.append(f"resumed at {life.ready}, the newest committed checkpoint is {expected}")
    redo = logged - (life.ready or 0)
    if redo > 0:
        want = f"{redo} episode{'s' if redo != 1 else ''} recorded"
        if not _said(life, want):
            if life.ready:
                problems.append(f"the resume line does not say '{want} after that checkpoint ...': {life.said[:2]}")
            else:
                problems.append(f"killed with {redo} episodes in the run log and no committed checkpoint, the next "
                                f"start did not say that they are discarded and redone: {life.said[:2]}")
            ok = False
    return ok


PHASES = {
    2: finish_kills,
    3: remote_startup,
    4: bit_flips,
    5: dead_remote,
    6: disk_full,
    7: two_sessions,
    8: one_history,
}
