"""Every command the README shows is checked here or run elsewhere in the suite.

- ``alignzeg ...`` lines: the subcommand's own parser accepts the options exactly as written (the
  commands themselves run in the subcommand tests on small trees in the official layouts).
- config files, scripts and split names the README names exist.
- ``dvc exp run -S key=value`` overrides name keys that ``params.yaml`` has.
- ``experiments/train.py`` lines (torchrun / srun): the script's parser accepts them.
- ``sbatch`` lines name the shipped batch script with ``-S`` keys that ``params.yaml`` has (the script
  itself runs in tests/test_engine/test_distributed.py).
- the first two commands are ``make demo`` and ``make test``, and ``.ci/run`` runs exactly ``make test``.
The DVC commands (``dvc repro``, ``metrics show``, ``plots show``, ``exp show``) and ``make demo``'s driver
(``python -m experiments.repro --jobs 2``) run in test_pipeline.py; the driver's lines parse here.
"""
from __future__ import annotations

import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def _bash_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    commands = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


COMMANDS = _bash_commands()


def _alignzeg_lines() -> list[str]:
    return [c for c in COMMANDS if c.startswith("alignzeg ")]


def test_readme_has_commands():
    assert len(COMMANDS) > 15 and len(_alignzeg_lines()) >= 8


def test_first_two_commands_and_ci():
    assert COMMANDS[:2] == ["make demo", "make test"]
    ci = (REPO / ".ci" / "run").read_text()
    assert [line for line in ci.splitlines() if line.startswith("make")] == ["make test"]


@pytest.mark.parametrize("line", _alignzeg_lines())
def test_alignzeg_command_parses(line):
    from alignzeg.cli import SUBCOMMANDS

    argv = shlex.split(line)[1:]
    name, rest = argv[0], argv[1:]
    assert name in SUBCOMMANDS, line
    module = importlib.import_module(SUBCOMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"alignzeg {name}", exit_on_error=False)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    if name == "prepare" and args.dataset == "synthetic":
        from alignzeg.data import synthetic

        sub = argparse.ArgumentParser(exit_on_error=False)
        synthetic.add_arguments(sub)
        sub.parse_args(args.rest)


def test_named_files_exist():
    paths = set(re.findall(r"(?:experiments|alignzeg|baselines|analysis)/[\w./-]+\.(?:py|sh|yaml|json)", README))
    assert len(paths) > 15
    missing = sorted(p for p in paths if not (REPO / p).is_file())
    assert not missing, missing
    configs = set(re.findall(r"`((?:alignzeg|zegclip|two-stage|maskclip)[\w.-]*_[\w.-]+\.py)`", README))
    for name in configs:
        assert list((REPO / "experiments" / "configs").rglob(name)), name


def test_dvc_overrides_name_existing_params():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    keys = re.findall(r"-S '?([\w.-]+)=", " ".join(c for c in COMMANDS if c.startswith("dvc exp run")))
    assert len(keys) >= 2
    for key in keys:
        node = params
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"params.yaml has no {key}"
            node = node[part]


def test_sbatch_lines_name_the_batch_script_and_existing_params():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    lines = [c for c in COMMANDS if c.startswith("sbatch ")]
    assert lines
    for line in lines:
        argv = shlex.split(line)
        assert argv[1] == "experiments/tools/slurm_repro.sh" and (REPO / argv[1]).is_file()
        for key in [argv[i + 1].split("=")[0] for i, a in enumerate(argv) if a == "-S"]:
            node = params
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"params.yaml has no {key}"
                node = node[part]


def test_launcher_commands_parse():
    import experiments.train as train

    lines = [c for c in COMMANDS if "experiments/train.py" in c and c.split()[0] in ("torchrun", "srun")]
    assert lines
    for line in lines:
        argv = shlex.split(line)
        rest = argv[argv.index("experiments/train.py") + 1:]
        parser = argparse.ArgumentParser(exit_on_error=False)
        train.add_arguments(parser)
        parser.parse_args([a if a != "CONFIG" else "x.py" for a in rest])


def test_repro_driver_lines_parse():
    from experiments.repro import build_parser

    lines = [c for c in COMMANDS if c.startswith("python -m experiments.repro")]
    assert lines, "the README shows how `make demo` runs the stages"
    for line in lines:
        build_parser().parse_args(shlex.split(line)[3:])
    make = (REPO / "Makefile").read_text()
    assert "-m experiments.repro --jobs $(DEMO_JOBS)" in make and "DEMO_JOBS ?= 2" in make


def test_split_names_in_readme_are_shipped():
    from alignzeg.splits import available_splits

    shipped = set(available_splits())
    for name in ("coco-stuff-156s15u", "voc12-15s5u", "context59-zs3-10u", "context59-cascadeclip-10u"):
        assert name in shipped and name in README


def _pipeline_lines() -> list[str]:
    lines = [c for c in COMMANDS if c.startswith("python -m experiments.pipeline")]
    lines += re.findall(r"\$\((python -m experiments\.pipeline [^)]*)\)", " ".join(COMMANDS))
    return lines


def test_pipeline_commands_run(tmp_path):
    """The profile commands run as written (--write goes to a temporary file instead of params.yaml);
    the `-S` arguments they print name keys that params.yaml has."""
    import subprocess
    import sys

    lines = _pipeline_lines()
    assert len(lines) >= 2
    for line in lines:
        argv = shlex.split(line)
        if "--write" in argv:
            argv[argv.index("--write") + 1] = str(tmp_path / "params.yaml")
        proc = subprocess.run([sys.executable, *argv[1:]], cwd=REPO, capture_output=True, text=True)
        assert proc.returncode == 0, (line, proc.stderr)
        if "--dvc-args" in argv:
            args = proc.stdout.split()
            assert args[0::2] == ["-S"] * (len(args) // 2) and len(args) >= 4
            params = yaml.safe_load((REPO / "params.yaml").read_text())
            for arg in args[1::2]:
                node = params
                for part in arg.split("=")[0].split("."):
                    assert part in node, arg
                    node = node[part]
        if "--write" in argv:
            from experiments.params import load

            assert load(tmp_path / "params.yaml")["base"]["profile"] == "voc12aug-vit-b16"


def test_readme_published_table_is_the_paper_table():
    """The README's table of published numbers lists exactly the rows of analysis/paper_table.yaml."""
    from analysis.report import load_paper_table

    section = README[README.index("## Comparison with published numbers"):]
    section = section[:section.index("\n## ", 5)]
    got = set()
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 8 and re.fullmatch(r"\d+\.\d", cells[4] or ""):
            got.add((cells[3], float(cells[4]), float(cells[5]), float(cells[6].rstrip(" ⚑"))))
    want = {(r["setting"], r["S"], r["U"], r["hIoU"]) for r in load_paper_table()["results"]}
    assert got == want
