"""Cohort specification: load ``data/cohorts/<name>/cohort.yaml`` + ``samples.csv``, validate, resolve paths.

This is the one place that knows where a cohort's inputs and outputs live; the notebooks, the
Makefile's runner (:mod:`helpers.runner`) and the tests all go through :func:`load_cohort`.
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

REQUIRED_COLUMNS = ["sample_id", "patient_id", "tissue", "response", "age", "batch"]
OPTIONAL_COLUMNS = ["path", "sample_column", "sex", "notes"]
KNOWN_KINDS = ("simulated", "real")
KNOWN_TISSUES = ("BM", "PB")


class InputError(ValueError):
    """The user's input (cohort definition, counts, panel, ...) is unusable; the message names the file, column
    or gene that is wrong and the fix. The runner turns it into exit status 2 (not a crash)."""


class CohortError(InputError):
    """A cohort definition is wrong; the message names the file, the row and the fix."""


def project_root() -> Path:
    """The repository root: ``$DR_ROOT`` if set, else the first parent of the CWD holding data/cohorts,
    else the checkout this package was installed (editable) from."""
    env = os.environ.get("DR_ROOT")
    if env:
        return Path(env).resolve()
    here = Path.cwd().resolve()
    for p in (here, *here.parents):
        if (p / "data" / "cohorts").is_dir() and (p / "pyproject.toml").exists():
            return p
    return Path(__file__).resolve().parents[3]  # src/helpers/data/cohort.py -> the checkout


@dataclass
class Cohort:
    """A validated cohort: its config, its sample sheet and where its outputs go."""

    name: str
    root: Path
    config: dict[str, Any]
    samples: pd.DataFrame
    dir: Path = field(repr=False)

    # -- derived locations (generated; never in git) -------------------------------------------
    @property
    def processed_dir(self) -> Path:
        return self.root / "data" / "processed" / self.name

    @property
    def results_dir(self) -> Path:
        return self.root / "results" / self.name

    @property
    def figures_dir(self) -> Path:
        return self.root / "figures" / self.name

    @property
    def findings_dir(self) -> Path:
        return self.results_dir / "findings"

    @property
    def kind(self) -> str:
        return self.config["kind"]

    @property
    def seed(self) -> int:
        return int(self.config["seed"])

    @property
    def groups(self) -> list[str]:
        return list(self.config["response"]["groups"])

    @property
    def reference_group(self) -> str:
        return self.config["response"]["reference"]

    @property
    def test_group(self) -> str:
        return [g for g in self.groups if g != self.reference_group][0]

    @property
    def discovery_tissue(self) -> str:
        return self.config.get("discovery_tissue", "BM")

    @property
    def validation_tissue(self) -> str | None:
        return self.config.get("validation_tissue")

    @property
    def simulation(self) -> dict[str, Any]:
        return self.config.get("simulation", {})

    def analysis(self, key: str, default: Any = None) -> Any:
        """A value from the cohort's ``analysis:`` block (per-cohort analysis parameters)."""
        return self.config.get("analysis", {}).get(key, default)

    def resolve(self, path: str | os.PathLike) -> Path:
        """Resolve a path from the config or samples.csv: relative paths are relative to the cohort folder."""
        p = Path(path)
        return p if p.is_absolute() else (self.dir / p).resolve()

    def make_dirs(self) -> None:
        for d in (self.processed_dir, self.results_dir, self.figures_dir, self.findings_dir):
            d.mkdir(parents=True, exist_ok=True)


def _err(file: Path, msg: str) -> str:
    return f"{file}: {msg}"


def validate_config(cfg: dict[str, Any], file: Path) -> list[str]:
    errors = []
    for key in ("name", "kind", "seed", "tissues", "response"):
        if key not in cfg:
            errors.append(_err(file, f"missing key '{key}' (see data/cohorts/ifm2017_sim/cohort.yaml for an example)"))
    if errors:
        return errors
    if cfg["kind"] not in KNOWN_KINDS:
        errors.append(_err(file, f"kind '{cfg['kind']}' is unknown: use one of {list(KNOWN_KINDS)}"))
    resp = cfg["response"]
    if not isinstance(resp, dict) or "groups" not in resp or "reference" not in resp:
        errors.append(_err(file, "response must have 'groups' (e.g. [CR, NR]) and 'reference' (e.g. CR)"))
    else:
        if len(resp["groups"]) != 2:
            errors.append(_err(file, f"response.groups must list exactly two groups, got {resp['groups']}"))
        if resp["reference"] not in resp["groups"]:
            errors.append(_err(file, f"response.reference '{resp['reference']}' is not in response.groups {resp['groups']}"))
    bad_t = [t for t in cfg["tissues"] if t not in KNOWN_TISSUES]
    if bad_t:
        errors.append(_err(file, f"tissues {bad_t} unknown: use {list(KNOWN_TISSUES)}"))
    if cfg["kind"] == "simulated" and "simulation" not in cfg:
        errors.append(_err(file, "a simulated cohort needs a 'simulation:' block"))
    return errors


def validate_samples(samples: pd.DataFrame, cfg: dict[str, Any], file: Path, cohort_dir: Path) -> list[str]:
    """Check the sample sheet; return a list of error messages (empty when valid)."""
    errors: list[str] = []
    cols = list(samples.columns)
    missing = [c for c in REQUIRED_COLUMNS if c not in cols]
    if cfg.get("kind") == "real" and "path" not in cols:
        missing.append("path")
    if missing:
        errors.append(_err(file, f"missing column(s) {missing}: the header must contain {REQUIRED_COLUMNS + ['path']}"))
    allowed = set(REQUIRED_COLUMNS) | set(OPTIONAL_COLUMNS) | set(cfg.get("covariates", []))
    unknown = [c for c in cols if c not in allowed]
    if unknown:
        errors.append(
            _err(file, f"unknown column(s) {unknown}: rename to one of {sorted(allowed)} or declare them under "
                 "'covariates:' in cohort.yaml")
        )
    if missing:
        return errors

    def row(i: int) -> str:
        return f"row {i + 2} (sample_id={samples.loc[i, 'sample_id']})"

    dup = samples["sample_id"].duplicated(keep="first")
    for i in samples.index[dup]:
        errors.append(_err(file, f"{row(i)}: duplicate sample_id; every sample_id must be unique"))
    groups = list(cfg["response"]["groups"])
    for i, r in samples["response"].items():
        if pd.isna(r) or str(r) not in groups:
            errors.append(_err(file, f"{row(i)}: response '{'' if pd.isna(r) else r}' is not one of {groups} declared in "
                               "cohort.yaml; fix the label or the declared groups"))
    tissues = list(cfg["tissues"])
    for i, t in samples["tissue"].items():
        if str(t) not in tissues:
            errors.append(_err(file, f"{row(i)}: tissue '{t}' is not one of {tissues} declared in cohort.yaml"))
    for i, a in samples["age"].items():
        if pd.isna(a):
            continue
        try:
            v = float(a)
        except (TypeError, ValueError):
            errors.append(_err(file, f"{row(i)}: age '{a}' is not a number; use years (e.g. 67 or 9.5) or leave empty"))
            continue
        if v < 0 or v > 120:
            errors.append(_err(file, f"{row(i)}: age {v} is outside 0-120 years"))
    if samples["age"].isna().any():
        n = int(samples["age"].isna().sum())
        warnings.warn(f"{file}: {n} sample(s) without age; age-group comparisons will leave them out", stacklevel=3)
    # one response per patient
    per_patient = samples.groupby("patient_id")["response"].nunique()
    for p in per_patient.index[per_patient > 1]:
        errors.append(_err(file, f"patient '{p}' has more than one response label; a patient has one response"))
    if cfg.get("kind") == "real" and "path" in cols:
        for i, p in samples["path"].items():
            if pd.isna(p) or str(p).strip() == "":
                errors.append(_err(file, f"{row(i)}: empty path; give the counts file or 10x folder of this sample"))
                continue
            full = Path(p) if Path(p).is_absolute() else (cohort_dir / p)
            if not full.exists():
                errors.append(_err(file, f"{row(i)}: counts path '{p}' does not exist (resolved to {full.resolve()})"))
    disc = cfg.get("discovery_tissue", "BM")
    sub = samples[samples["tissue"].astype(str) == disc]
    for g in groups:
        n = sub.loc[sub["response"].astype(str) == g, "patient_id"].nunique()
        if n < 2:
            errors.append(_err(file, f"group '{g}' has {n} patient(s) in tissue {disc}; CR-vs-NR statistics need at least "
                               "two patients per group"))
    return errors


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override``'s values, merged key by key into nested dictionaries (neither is modified)."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def inherited_simulation(sim: dict[str, Any], cohorts_dir: Path, file: Path, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A ``simulation:`` block with ``base: <cohort>`` resolved: the base cohort's block (itself resolved) with this
    block's keys merged over it, so a twin or a smaller cohort states only what differs."""
    name = sim["base"]
    base_file = cohorts_dir / str(name) / "cohort.yaml"
    if name in seen or not base_file.exists():
        why = "inherits from itself" if name in seen else f"names base cohort '{name}', which has no {base_file}"
        raise CohortError(_err(file, f"simulation.base {why}"))
    base_sim = (yaml.safe_load(base_file.read_text()) or {}).get("simulation", {})
    if "base" in base_sim:
        base_sim = inherited_simulation(base_sim, cohorts_dir, base_file, seen + (name,))
    return deep_merge(base_sim, {k: v for k, v in sim.items() if k != "base"})


def load_cohort(name: str, root: str | os.PathLike | None = None) -> Cohort:
    """Load and validate a cohort by name (a folder under data/cohorts/). Raises :class:`CohortError`."""
    root = Path(root).resolve() if root is not None else project_root()
    cdir = root / "data" / "cohorts" / name
    cfg_file = cdir / "cohort.yaml"
    if not cfg_file.exists():
        available = sorted(p.name for p in (root / "data" / "cohorts").glob("*") if (p / "cohort.yaml").exists())
        raise CohortError(f"{cfg_file}: no such cohort '{name}'. Available: {available}. "
                          "Copy a cohort folder to make a new one.")
    try:
        cfg = yaml.safe_load(cfg_file.read_text()) or {}
    except yaml.YAMLError as e:
        raise CohortError(f"{cfg_file}: not valid YAML ({e})") from e
    errors = validate_config(cfg, cfg_file)
    if not errors and isinstance(cfg.get("simulation"), dict) and "base" in cfg["simulation"]:
        try:
            cfg["simulation"] = inherited_simulation(cfg["simulation"], root / "data" / "cohorts", cfg_file)
        except CohortError as e:
            errors.append(str(e))
    if not errors and cfg["name"] != name:
        errors.append(_err(cfg_file, f"name '{cfg['name']}' differs from the folder name '{name}'; make them equal"))
    samples_file = cdir / cfg.get("samples", "samples.csv")
    if not samples_file.exists():
        errors.append(_err(samples_file, "missing: every cohort needs a samples.csv (one row per sample)"))
        raise CohortError("\n".join(errors))
    try:
        samples = pd.read_csv(samples_file, dtype={"sample_id": str, "patient_id": str, "batch": str,
                                                   "tissue": str, "response": str, "path": str})
    except Exception as e:  # pandas raises many kinds here
        raise CohortError(f"{samples_file}: cannot be read as CSV ({e})") from e
    if not errors:
        errors += validate_samples(samples, cfg, samples_file, cdir)
    if errors:
        raise CohortError("cohort '" + name + "' is invalid:\n  - " + "\n  - ".join(errors))
    samples = samples.copy()
    samples["age"] = pd.to_numeric(samples["age"])
    return Cohort(name=name, root=root, config=cfg, samples=samples.reset_index(drop=True), dir=cdir)


def notebook_parameters(cohort: Cohort, notebook: str) -> dict[str, Any]:
    """The papermill parameters for one notebook: only the cohort's name. Everything else (seed, the folders it
    reads and writes, analysis settings) the notebook derives from the cohort, exactly as when it is opened in
    JupyterLab; the project root comes from ``$DR_ROOT``, which the runner sets (:func:`project_root`)."""
    return {"cohort": cohort.name}
