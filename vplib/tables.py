"""Grid records as tables: a tidy DataFrame, mean ± sd over seeds, paired differences, lookups.

The chapters read committed grids (``vplib.experiments`` records in ``book/results``) and live
runs (:func:`vplib.experiments.live_run`, same record schema). This module turns either into
the tables the book shows, with one spelling of every statistic:

* :func:`records_frame`: one row per run (identity, recipe, accuracies, cost), plus a
  ``setting`` label that the chapter chooses;
* :func:`mean_sd`: mean, sample sd and count over seeds per group, and a ``cell`` string
  ``"88.0 ± 0.5"`` (percent);
* :func:`paired_differences`: ``a - b`` per seed (same data, same seed), its mean and sd,
  a paired t-test and a verdict that says "not resolved" unless every seed agrees and
  p < ``alpha``;
* :func:`pick` / :func:`mean_of`: one number out of a frame, failing loudly when the filter
  matches nothing (or, for :func:`pick`, more than one row);
* :func:`provenance`: the commands, commits and profiles of a committed grid;
* :func:`selected` / :func:`lr_choices` / :func:`convergence`: for a grid tuned on validation
  (``vplib.experiments.select_then_seed``), the runs at each setting's chosen learning rate,
  the choice itself, and how many runs stopped on a validation plateau rather than at their
  epoch cap.
"""

from __future__ import annotations

import json
from typing import Callable, Iterable

import pandas as pd

RECORD_COLUMNS = ("dataset", "backbone", "method", "seed", "test_acc", "val_acc", "best_epoch",
                  "n_train", "n_test", "trainable_params", "backbone_params",
                  "seconds_per_epoch")


def describe(record: dict) -> str:
    """Default ``setting`` label: the method and its options, e.g. ``vp-pad prompt_size=8``."""
    opts = " ".join(f"{k}={v}" for k, v in sorted(record.get("options", {}).items()))
    return f"{record['method']} {opts}".strip()


def records_frame(records: Iterable[dict], setting: Callable[[dict], str] | None = describe,
                  **extra: Callable[[dict], object]) -> pd.DataFrame:
    """One row per record: :data:`RECORD_COLUMNS`, the fit recipe (``lr``, ``epochs``,
    ``batch_size``), ``options`` (a JSON string, hashable), ``trainable_pct`` (of the
    backbone), ``setting`` (``setting(record)``; ``None`` leaves it out) and one column per
    keyword of ``extra`` (``name=function of the record``)."""
    rows = []
    for r in records:
        fit = r.get("fit", {})
        row = {k: r.get(k) for k in RECORD_COLUMNS}
        row.update(options=json.dumps(r.get("options", {}), sort_keys=True),
                   lr=fit.get("lr"), epochs=fit.get("epochs"), batch_size=fit.get("batch_size"),
                   trainable_pct=100 * r["trainable_params"] / r["backbone_params"])
        if setting is not None:
            row["setting"] = setting(r)
        row.update({name: fn(r) for name, fn in extra.items()})
        rows.append(row)
    if not rows:
        raise ValueError("no records: the grid is empty or the filter matched nothing")
    return pd.DataFrame(rows)


def format_mean_sd(mean: float, sd: float | None = None, n: int | None = None, *,
                   scale: float = 100, digits: int = 1) -> str:
    """``"88.0 ± 0.5"`` (``mean`` and ``sd`` times ``scale``); the mean alone when there is
    one value (``n == 1``) or no sd."""
    if sd is None or n == 1 or pd.isna(sd):
        return f"{scale * mean:.{digits}f}"
    return f"{scale * mean:.{digits}f} ± {scale * sd:.{digits}f}"


def mean_sd(frame: pd.DataFrame, by, value: str = "test_acc") -> pd.DataFrame:
    """Per group of ``by`` (a column or list of columns, in first-seen order): ``mean``,
    ``sd`` (sample, ddof 1; NaN for one value), ``n`` and ``cell`` (:func:`format_mean_sd`)."""
    by = [by] if isinstance(by, str) else list(by)
    g = frame.groupby(by, sort=False)[value]
    out = pd.DataFrame({"mean": g.mean(), "sd": g.std(), "n": g.size()}).reset_index()
    out["cell"] = [format_mean_sd(m, s, n) for m, s, n in zip(out["mean"], out["sd"], out["n"])]
    return out


def paired_differences(frame: pd.DataFrame, a: str, b: str, *, column: str = "setting",
                       by=("dataset",), pair: str = "seed", value: str = "test_acc",
                       alpha: float = 0.05) -> pd.DataFrame:
    """``a - b`` of ``value`` between the rows where ``column == a`` and ``column == b``,
    paired on ``pair`` (the seed) within each group of ``by``.

    Returns one row per group: ``a`` and ``b`` means, ``diff`` (mean of the paired
    differences), ``diff_sd``, ``n`` pairs, the two-sided paired t-test ``p`` (NaN below two
    pairs) and ``verdict``: "<a> better" / "<b> better" when every pair has the same sign and
    ``p < alpha``, else "not resolved".
    """
    from scipy import stats

    by = [by] if isinstance(by, str) else list(by)
    rows = []
    for key, group in frame.groupby(by, sort=False):
        left = group[group[column] == a].set_index(pair)[value]
        right = group[group[column] == b].set_index(pair)[value]
        for side, name in ((left, a), (right, b)):
            if side.index.duplicated().any():
                raise ValueError(f"{name!r} has several rows per {pair} in group {key}: "
                                 f"narrow the frame to one row per {pair} first")
        seeds = sorted(set(left.index) & set(right.index))
        if not seeds:
            continue
        diff = left[seeds] - right[seeds]
        p = stats.ttest_rel(left[seeds], right[seeds]).pvalue if len(seeds) > 1 else float("nan")
        verdict = "not resolved"
        if p < alpha and (diff > 0).all():
            verdict = f"{a} better"
        elif p < alpha and (diff < 0).all():
            verdict = f"{b} better"
        keys = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, keys)), a: left[seeds].mean(), b: right[seeds].mean(),
                     "diff": diff.mean(), "diff_sd": diff.std() if len(seeds) > 1 else float("nan"),
                     "n": len(seeds), "p": p, "verdict": verdict})
    if not rows:
        raise ValueError(f"no {pair} has both {column}={a!r} and {column}={b!r}")
    return pd.DataFrame(rows)


def _select(frame: pd.DataFrame, where: dict) -> pd.DataFrame:
    mask = pd.Series(True, index=frame.index)
    for k, v in where.items():
        if k not in frame.columns:
            raise KeyError(f"no column {k!r}; columns: {list(frame.columns)}")
        mask &= frame[k] == v
    return frame[mask]


def pick(frame: pd.DataFrame, value: str = "test_acc", **where) -> float:
    """The ``value`` of the one row matching ``where`` (``column=value`` equalities)."""
    rows = _select(frame, where)
    if len(rows) != 1:
        raise LookupError(f"{len(rows)} rows match {where} (expected exactly one)")
    return float(rows[value].iloc[0])


def mean_of(frame: pd.DataFrame, value: str = "test_acc", **where) -> float:
    """The mean of ``value`` over the rows matching ``where`` (at least one)."""
    rows = _select(frame, where)
    if rows.empty:
        raise LookupError(f"no rows match {where}")
    return float(rows[value].mean())


def provenance(results: dict) -> str:
    """How a committed grid (``vplib.experiments.export``'s JSON) was made: its commands, one
    per line, then its commits and profiles."""
    lines = [f"$ {c}" for c in results.get("commands", [])]
    lines.append("commit(s): " + ", ".join(results.get("git_commits", ["unknown"]))
                 + " · profile(s): " + ", ".join(results.get("profiles", ["unknown"])))
    return "\n".join(lines)


def welch_p(a, b) -> float:
    """Two-sided p-value of Welch's two-sample t-test (unpaired, unequal variances) for a
    difference in mean between the values ``a`` and ``b`` (e.g. the seeds of two methods).

    NaN with fewer than two values on either side; when neither side varies, 1.0 for equal
    means and 0.0 for different ones (the t statistic is undefined there).
    """
    import numpy as np
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    if a.var(ddof=1) + b.var(ddof=1) == 0:
        return 1.0 if a.mean() == b.mean() else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def against_best(frame: pd.DataFrame, by, *, column: str = "method", value: str = "test_acc",
                 alpha: float = 0.05) -> pd.DataFrame:
    """Every ``column`` value (e.g. method) against the best mean of ``value`` within each
    group of ``by`` (e.g. backbone and dataset), unpaired: :func:`welch_p` over the rows
    (the seeds) of the two.

    Returns one row per group and ``column`` value, both in first-seen order: ``mean``,
    ``sd`` (sample; NaN for one row), ``n``, ``gap`` (the best mean minus this mean), ``p``
    (against the best) and ``verdict``: "best" (the first of the highest means), "too few
    seeds" (p is NaN), "not resolved from the best" (p >= ``alpha``) or "below the best".
    """
    by = [by] if isinstance(by, str) else list(by)
    rows = []
    for key, group in frame.groupby(by, sort=False, observed=True):
        values = {name: part[value].to_numpy(float)
                  for name, part in group.groupby(column, sort=False, observed=True)}
        best = max(values, key=lambda name: values[name].mean())
        keys = key if isinstance(key, tuple) else (key,)
        for name, v in values.items():
            p = welch_p(values[best], v)
            verdict = ("best" if name == best else "too few seeds" if pd.isna(p)
                       else "not resolved from the best" if p >= alpha else "below the best")
            rows.append({**dict(zip(by, keys)), column: name, "mean": float(v.mean()),
                         "sd": float(v.std(ddof=1)) if len(v) > 1 else float("nan"),
                         "n": len(v), "gap": float(values[best].mean() - v.mean()), "p": p,
                         "verdict": verdict})
    if not rows:
        raise ValueError("no rows: the frame is empty")
    return pd.DataFrame(rows)


def binomial_se(acc, n):
    """One binomial standard error of an accuracy ``acc`` measured on ``n`` test images,
    ``sqrt(acc (1 - acc) / n)``: a float for numbers (NumPy scalars included), element-wise
    for aligned Series / arrays."""
    se = (acc * (1 - acc) / n) ** 0.5
    return float(se) if pd.api.types.is_scalar(se) else se


# How the record columns of records_frame read in a table's header.
HEADERS = {"test_acc": "test acc", "val_acc": "val acc", "se": "± se",
           "trainable_params": "trainable params", "backbone_params": "backbone params",
           "trainable_pct": "trainable % of backbone", "best_epoch": "best epoch",
           "seconds_per_epoch": "s / epoch", "train_seconds": "train time (s)",
           "n_train": "training images", "n_test": "test images"}


def styled(frame: pd.DataFrame, columns=None, **formats):
    """``frame[columns]`` (default: all) as a Styler with the index hidden, the record columns
    of :func:`records_frame` under readable headers (:data:`HEADERS`: ``test_acc`` reads
    "test acc") and in the course's formats: accuracies (``test_acc``, ``val_acc``, ``se``) as
    percentages, parameter counts with thousands separators, ``trainable_pct`` to 3 decimals,
    ``seconds_per_epoch`` to 1 and ``train_seconds`` to 0. ``formats``
    (``column="{:.2f}"``) add to or override them."""
    shown = frame if columns is None else frame[list(columns)]
    known = {"test_acc": "{:.1%}", "val_acc": "{:.1%}", "se": "{:.1%}",
             "trainable_params": "{:,}", "backbone_params": "{:,}", "trainable_pct": "{:.3f}",
             "seconds_per_epoch": "{:.1f}", "train_seconds": "{:.0f}"}
    known.update(formats)
    used = {k: v for k, v in known.items() if k in shown.columns}
    headers = [HEADERS.get(c, c) for c in shown.columns]
    return shown.style.format(used).hide(axis="index").relabel_index(headers, axis="columns")


def styler_latex(styler) -> str | None:
    """A styled table as LaTeX for the book's PDF (``make pdf``), or ``None`` where pandas
    cannot write it (the PDF then shows the table's plain text). Every cell, index label and
    header is shown as the styler formats it, with LaTeX's special characters escaped; bold
    cells stay bold (``font-weight: bold`` becomes ``\\bfseries``); the caption becomes a
    paragraph above the table, since a float could drift away from the prose about it.

    pandas escapes only through ``Styler.format(escape=...)``, which would replace the
    table's own formatters, so the formatters are wrapped instead: this reads the styler's
    ``_display_funcs*`` attributes (private in pandas 2 and 3), and any failure returns ``None``.
    """
    from collections import defaultdict

    def escaped(func):
        return lambda value: latex_escape(func(value))

    shown = styler._copy(deepcopy=False)
    try:
        for attr in ("_display_funcs", "_display_funcs_index", "_display_funcs_columns"):
            funcs = getattr(styler, attr)
            wrapped = defaultdict(lambda f=funcs.default_factory: escaped(f()))
            wrapped.update({key: escaped(func) for key, func in funcs.items()})
            setattr(shown, attr, wrapped)
        caption, shown.caption = shown.caption, None
        shown.table_styles = []  # CSS for the web page (padding, widths): nothing in LaTeX
        body = shown.to_latex(hrules=True, convert_css=True)
    except Exception:  # noqa: BLE001 - pandas internals moved: the PDF shows the plain text
        return None
    if isinstance(caption, (tuple, list)):
        caption = caption[-1]
    head = "" if not caption else f"\\par\\noindent\\emph{{{latex_escape(caption)}}}\\par\n"
    return f"{head}{{\\small\n{body}}}"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}"}


def latex_escape(text) -> str:
    """``str(text)`` with LaTeX's special characters escaped, in one pass."""
    import re

    return re.sub(r"[\\&%$#_{}~^]", lambda m: _LATEX_SPECIAL[m.group()], str(text))


def paired_table(frame: pd.DataFrame, a: str, b: str, *, column: str = "setting",
                 by=("dataset",), labels: dict | None = None, digits: int = 1,
                 pair: str = "seed", value: str = "test_acc", alpha: float = 0.05) -> pd.DataFrame:
    """The table of a paired comparison, one row per group of ``by`` (first-seen order):
    ``a`` and ``b`` as mean ± sd over their runs (:func:`format_mean_sd`, percent, ``digits``
    decimals), ``n`` pairs, ``"<a> - <b>"`` as the mean ± sd of the paired differences in
    points (signed), and the paired t-test's ``p`` and ``verdict``
    (:func:`paired_differences`). ``labels`` renames ``a`` and ``b`` in the headers."""
    by = [by] if isinstance(by, str) else list(by)
    names = {a: a, b: b, **(labels or {})}
    stats = mean_sd(frame[frame[column].isin([a, b])], by + [column], value)
    stats["cell"] = [format_mean_sd(m, s, n, digits=digits)
                     for m, s, n in zip(stats["mean"], stats["sd"], stats["n"])]
    cells = stats.pivot(index=by, columns=column, values="cell")
    diffs = paired_differences(frame, a, b, column=column, by=by, pair=pair, value=value,
                               alpha=alpha).set_index(by)
    out = pd.DataFrame({names[a]: cells[a], names[b]: cells[b]}).loc[diffs.index]
    out["n"] = diffs["n"]
    out[f"{names[a]} - {names[b]}"] = [
        f"{100 * d:+.{digits}f}" + ("" if pd.isna(s) else f" ± {100 * s:.{digits}f}")
        for d, s in zip(diffs["diff"], diffs["diff_sd"])]
    out["p"], out["verdict"] = diffs["p"], diffs["verdict"]
    return out.reset_index()


def selected(records: Iterable[dict]) -> list[dict]:
    """The runs of a tuned grid that belong to its reported results: those at their setting's
    chosen learning rate (``lr_selection["selected"]``). Records without ``lr_selection``
    (an untuned grid) are all kept."""
    return [r for r in records if r.get("lr_selection", {}).get("selected", True)]


def lr_choices(records: Iterable[dict], by=("dataset", "backbone", "method")) -> pd.DataFrame:
    """One row per group of ``by`` (first-seen order) of a tuned grid: the learning rates tried
    with the first seed (``grid``), their validation accuracies (``val_acc``, a list in the
    grid's order), the ``chosen`` rate, how many rates were ``extended`` beyond the first grid,
    ``at_edge`` (the choice is still an end of the grid) and the ``seeds`` run at the choice.
    Raises when the records of one group disagree on the choice (stale records of an earlier
    selection in the same file)."""
    by = [by] if isinstance(by, str) else list(by)
    rows: dict = {}
    for r in records:
        sel = r.get("lr_selection")
        if sel is None:
            continue
        key = tuple(r[k] for k in by)
        row = {**dict(zip(by, key)), "grid": list(sel["lrs"]), "val_acc": list(sel["val_acc"]),
               "chosen": sel["chosen"], "extended": sel.get("extended", 0),
               "at_edge": bool(sel["at_edge"])}
        old = rows.setdefault(key, {**row, "seeds": 0})
        if any(old[k] != row[k] for k in ("grid", "chosen")):
            raise ValueError(f"records of {dict(zip(by, key))} disagree on the learning-rate "
                             f"choice ({old['chosen']} from {old['grid']} vs {row['chosen']} "
                             f"from {row['grid']}): drop the stale ones")
        old["seeds"] += bool(sel["selected"])
    if not rows:
        raise ValueError("no record has an lr_selection: the grid was not tuned on validation")
    return pd.DataFrame(list(rows.values()))


def convergence(records: Iterable[dict], by=None) -> pd.DataFrame:
    """How the runs ended, per group of ``by`` (all runs together when ``None``): ``runs``,
    ``stopped`` (ended by early stopping: validation accuracy stopped improving),
    ``stopped_pct``, ``capped`` (ran to their epoch cap), the median and largest
    ``epochs_run`` and the median ``best_epoch``."""
    frame = pd.DataFrame([{
        "group": tuple(r[k] for k in by) if by else ("all",),
        "stopped": bool(r.get("stopped_early")),
        "epochs": r.get("epochs_run", len(r.get("history", []))),
        "cap": r.get("fit", {}).get("epochs"), "best_epoch": r.get("best_epoch")}
        for r in records])
    if frame.empty:
        raise ValueError("no records")
    rows = []
    for group, part in frame.groupby("group", sort=False):
        rows.append({**(dict(zip(by, group)) if by else {}), "runs": len(part),
                     "stopped": int(part.stopped.sum()),
                     "stopped_pct": 100 * float(part.stopped.mean()),
                     "capped": int(((part.epochs >= part.cap) & ~part.stopped).sum()),
                     "epochs_median": float(part.epochs.median()),
                     "epochs_max": int(part.epochs.max()),
                     "best_epoch_median": float(part.best_epoch.median())})
    return pd.DataFrame(rows)
