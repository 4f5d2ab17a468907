"""Continual-learning metrics over the class-incremental accuracy matrix.

Convention: ``A[i, t]`` is the top-1 accuracy (percent, 0..100) on task ``i``'s test set after
training task ``t`` (0-based in code; formulas below are 1-based, with T tasks and ``A[i,t]``
read the same way). Only entries with ``i <= t`` (on or above the diagonal) are meaningful;
entries with ``i > t`` (tasks not yet seen) are ignored, whatever they hold (NaN, or the zeros
that HiDe-Prompt's ``acc_matrix`` starts with).

Functions and where their definitions come from:

- ``faa``: final average accuracy, task-balanced (L2P / DualPrompt "Avg. Acc", HiDe-Prompt,
  NoRGa, STAR-Prompt "FAA", mammoth's mean accuracy).
- ``caa`` / ``average_accuracies``: cumulative average accuracy, i.e. average incremental
  accuracy with task-balanced steps (HiDe-Prompt, NoRGa).
- ``forgetting``: forgetting measure FM (Chaudhry et al., ECCV 2018; L2P, DualPrompt, mammoth).
- ``coda_forgetting``: CODA-Prompt's F_N (Smith et al., CVPR 2023; utils/calc_forgetting.py).
- ``vclimb_accuracy`` / ``vclimb_bwf`` (and per-step ``vclimb_accuracies`` / ``vclimb_bwfs``):
  vCLIMB's class-count-weighted Acc and backward forgetting (Villa et al., CVPR 2022).
- ``sample_weighted_accuracy`` / ``sample_weighted_accuracies``: accuracy on the pooled test
  set of all seen tasks (CODA-Prompt's reported A_N, PILOT, PyCIL).
- ``old_new_accuracy``: PILOT-style accuracy on old tasks (pooled) and on the newest task.
- ``backward_transfer``: BWT (Lopez-Paz & Ranzato, GEM, NeurIPS 2017).
- ``summary``: all of the above as a flat, JSON-serialisable dict.

WARNING: papers give different quantities the same name, silently. "Forgetting" may mean FM
(max over earlier steps minus final, averaged over old tasks), CODA-Prompt's F_N (average
step-to-step drop, averaged over steps) or vCLIMB's BWF (diagonal minus final, weighted by
class count); the official L2P / DualPrompt / HiDe-Prompt / mammoth code computes FM with the
final step inside the max, so every term is clipped at >= 0 (``forgetting(A,
include_final=True)``). "Average accuracy" may be task-balanced (``faa``) or sample-weighted
(``sample_weighted_accuracy``); they agree only when all test sets have the same size. Compare
numbers across papers only after checking which definition each used.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "average_accuracies",
    "backward_transfer",
    "caa",
    "check_matrix",
    "coda_forgetting",
    "faa",
    "forgetting",
    "old_new_accuracy",
    "sample_weighted_accuracies",
    "sample_weighted_accuracy",
    "summary",
    "vclimb_accuracies",
    "vclimb_accuracy",
    "vclimb_bwf",
    "vclimb_bwfs",
]


def check_matrix(A: ArrayLike) -> np.ndarray:
    """Validate an accuracy matrix and return a float64 copy with unseen entries set to NaN.

    ``A`` must be 2-D, square (T x T, T >= 1) and finite wherever ``i <= t``; entries with
    ``i > t`` are ignored and replaced by NaN in the returned copy.
    """
    try:
        M = np.array(A, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"accuracy matrix must be numeric: {exc}") from exc
    if M.ndim != 2:
        raise ValueError(
            f"accuracy matrix must be 2-D (tasks x steps), got {M.ndim}-D with shape {M.shape}"
        )
    if M.shape[0] != M.shape[1]:
        raise ValueError(f"accuracy matrix must be square (T x T), got shape {M.shape}")
    T = M.shape[0]
    if T == 0:
        raise ValueError("accuracy matrix is empty; it needs at least one task")
    seen = np.triu(np.ones((T, T), dtype=bool))  # i <= t
    bad = seen & ~np.isfinite(M)
    if bad.any():
        i, t = (int(k) for k in np.argwhere(bad)[0])
        raise ValueError(
            f"accuracy matrix has {int(bad.sum())} non-finite value(s) where i <= t "
            f"(tasks already seen), first A[{i}, {t}] = {M[i, t]}; "
            "only entries with i > t (tasks not yet seen) may be NaN"
        )
    M[~seen] = np.nan
    return M


def _weights(w: ArrayLike, T: int, name: str) -> np.ndarray:
    """One positive, finite weight per task."""
    try:
        arr = np.asarray(w, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric: {exc}") from exc
    if arr.shape != (T,):
        raise ValueError(f"{name} needs one entry per task ({T}), got shape {arr.shape}")
    if not (np.all(np.isfinite(arr)) and np.all(arr > 0)):
        raise ValueError(f"{name} must be positive and finite, got {arr.tolist()}")
    return arr


def _weighted_step_means(M: np.ndarray, w: np.ndarray) -> np.ndarray:
    """a_t = sum_{i<=t} w_i A[i,t] / sum_{i<=t} w_i for each step t."""
    T = M.shape[0]
    return np.array([np.average(M[: t + 1, t], weights=w[: t + 1]) for t in range(T)])


def faa(A: ArrayLike) -> float:
    """Final average accuracy, task-balanced.

    FAA = (1/T) sum_{i=1..T} A[i,T].

    L2P / DualPrompt "Avg. Acc", HiDe-Prompt / NoRGa / STAR-Prompt "FAA" (HiDe's
    ``evaluate_till_now``, mammoth's mean over tasks); equals CODA-Prompt's A_N only when
    all test sets have the same size (see ``sample_weighted_accuracy``).
    """
    M = check_matrix(A)
    return float(np.mean(M[:, -1]))


def average_accuracies(A: ArrayLike) -> np.ndarray:
    """Task-balanced average accuracy after each step: a_t = (1/t) sum_{i=1..t} A[i,t].

    Returns an array of length T; ``a[-1] == faa(A)``.
    """
    M = check_matrix(A)
    return _weighted_step_means(M, np.ones(M.shape[0]))


def caa(A: ArrayLike) -> float:
    """Cumulative average accuracy (average incremental accuracy, task-balanced steps).

    CAA = (1/T) sum_{t=1..T} (1/t) sum_{i=1..t} A[i,t].

    HiDe-Prompt, NoRGa. iCaRL / PyCIL / PILOT average the pooled (sample-weighted) accuracy
    instead: ``np.mean(sample_weighted_accuracies(A, sizes))``.
    """
    return float(np.mean(average_accuracies(A)))


def forgetting(A: ArrayLike, include_final: bool = False) -> float:
    """Forgetting measure FM after the final task (0.0 when T == 1).

    FM = (1/(T-1)) sum_{i=1..T-1} ( max_{t=i..T-1} A[i,t] - A[i,T] ).

    This is the formula written in Chaudhry et al. (ECCV 2018) and the L2P / DualPrompt
    papers; a task whose accuracy rose after it was learned contributes a negative term.
    The public code of L2P / DualPrompt (JAX and PyTorch ports), HiDe-Prompt
    (``evaluate_till_now``: ``np.max(acc_matrix, axis=1) - acc_matrix[:, task_id]``) and
    mammoth (``utils/metrics.forgetting``) puts the final step inside the max, so each term
    is clipped at >= 0; ``include_final=True`` reproduces that (max over t = i..T).
    """
    M = check_matrix(A)
    T = M.shape[0]
    if T == 1:
        return 0.0
    stop = T if include_final else T - 1
    terms = [np.max(M[i, i:stop]) - M[i, -1] for i in range(T - 1)]
    return float(np.mean(terms))


def coda_forgetting(A: ArrayLike) -> float:
    """CODA-Prompt's forgetting F_N (0.0 when T == 1).

    F_N = (1/(T-1)) sum_{t=2..T} (1/(t-1)) sum_{i=1..t-1} (A[i,t-1] - A[i,t]),
    the mean step-to-step drop on old tasks, averaged over steps (GT-RIPL/CODA-Prompt
    ``utils/calc_forgetting.py``, which assumes equal task sizes). Not the same as FM.
    """
    M = check_matrix(A)
    T = M.shape[0]
    if T == 1:
        return 0.0
    drops = [np.mean(M[:t, t - 1] - M[:t, t]) for t in range(1, T)]
    return float(np.sum(drops) / (T - 1))


def backward_transfer(A: ArrayLike) -> float:
    """Backward transfer (0.0 when T == 1); negative means forgetting.

    BWT = (1/(T-1)) sum_{i=1..T-1} (A[i,T] - A[i,i])  (GEM, Lopez-Paz & Ranzato 2017;
    mammoth ``backward_transfer``, HiDe-Prompt "Backward").
    """
    M = check_matrix(A)
    T = M.shape[0]
    if T == 1:
        return 0.0
    return float(np.mean(M[:-1, -1] - np.diag(M)[:-1]))


def vclimb_accuracies(A: ArrayLike, classes_per_task: ArrayLike) -> np.ndarray:
    """vCLIMB Acc after each step t: sum_{j<=t} c_j A[j,t] / sum_{j<=t} c_j.

    c_j = number of classes in task j (vCLIMB ``main.py validate``:
    ``total_acc.update(top1.avg, num_classes)``).
    """
    M = check_matrix(A)
    c = _weights(classes_per_task, M.shape[0], "classes_per_task")
    return _weighted_step_means(M, c)


def vclimb_accuracy(A: ArrayLike, classes_per_task: ArrayLike) -> float:
    """vCLIMB final Acc (Villa et al., CVPR 2022), class-count weighted.

    Acc = sum_{j=1..T} c_j A[j,T] / sum_{j=1..T} c_j, with c_j the classes in task j.
    """
    return float(vclimb_accuracies(A, classes_per_task)[-1])


def vclimb_bwfs(A: ArrayLike, classes_per_task: ArrayLike) -> np.ndarray:
    """vCLIMB BWF after each step t (0.0 at the first step).

    BWF_t = sum_{j<t} c_j (A[j,j] - A[j,t]) / sum_{j<t} c_j  (vCLIMB ``main.py validate``:
    ``BWF.update(list_val_acc_ii[n_task] - top1.avg, num_classes)``).
    """
    M = check_matrix(A)
    T = M.shape[0]
    c = _weights(classes_per_task, T, "classes_per_task")
    diag = np.diag(M)
    out = [0.0] + [np.average(diag[:t] - M[:t, t], weights=c[:t]) for t in range(1, T)]
    return np.array(out)


def vclimb_bwf(A: ArrayLike, classes_per_task: ArrayLike) -> float:
    """vCLIMB backward forgetting after the final task (lower is better; 0.0 when T == 1).

    BWF = sum_{j=1..T-1} c_j (A[j,j] - A[j,T]) / sum_{j=1..T-1} c_j. The paper writes the
    unweighted mean, i.e. -BWT; the official code weights by class count, as here.
    """
    return float(vclimb_bwfs(A, classes_per_task)[-1])


def sample_weighted_accuracies(A: ArrayLike, test_sizes: ArrayLike) -> np.ndarray:
    """Pooled accuracy over all seen tasks after each step t.

    acc_t = sum_{i<=t} n_i A[i,t] / sum_{i<=t} n_i, n_i = size of task i's test set.
    """
    M = check_matrix(A)
    n = _weights(test_sizes, M.shape[0], "test_sizes")
    return _weighted_step_means(M, n)


def sample_weighted_accuracy(A: ArrayLike, test_sizes: ArrayLike) -> float:
    """Accuracy on the pooled test set of all tasks after the final task.

    acc = sum_{i=1..T} n_i A[i,T] / sum_{i=1..T} n_i  (CODA-Prompt's reported accuracy,
    PILOT / PyCIL "total" accuracy). Equals ``faa`` only when all n_i are equal.
    """
    return float(sample_weighted_accuracies(A, test_sizes)[-1])


def old_new_accuracy(
    A: ArrayLike, test_sizes: ArrayLike, t: int | None = None
) -> tuple[float, float]:
    """PILOT-style (old, new) accuracy after step ``t`` (0-based, default: last; -1 allowed).

    old = sum_{i<t} n_i A[i,t] / sum_{i<t} n_i (pooled over earlier tasks; NaN when t == 0),
    new = A[t,t].
    """
    M = check_matrix(A)
    T = M.shape[0]
    n = _weights(test_sizes, T, "test_sizes")
    if t is None:
        t = T - 1
    if not -T <= t < T:
        raise ValueError(f"step t={t} is out of range for {T} task(s)")
    t %= T
    old = float(np.average(M[:t, t], weights=n[:t])) if t > 0 else float("nan")
    return old, float(M[t, t])


def summary(
    A: ArrayLike,
    test_sizes: ArrayLike | None = None,
    classes_per_task: ArrayLike | None = None,
) -> dict[str, float]:
    """All final-step metrics as a flat dict of Python floats.

    Keys: faa, caa, fm (``forgetting``, include_final=False), coda_fn, bwt; with
    ``test_sizes`` also sample_acc, old_acc (NaN when T == 1), new_acc; with
    ``classes_per_task`` also vclimb_acc, vclimb_bwf.
    """
    M = check_matrix(A)
    out = {
        "faa": faa(M),
        "caa": caa(M),
        "fm": forgetting(M),
        "coda_fn": coda_forgetting(M),
        "bwt": backward_transfer(M),
    }
    if test_sizes is not None:
        old, new = old_new_accuracy(M, test_sizes)
        out["sample_acc"] = sample_weighted_accuracy(M, test_sizes)
        out["old_acc"] = old
        out["new_acc"] = new
    if classes_per_task is not None:
        out["vclimb_acc"] = vclimb_accuracy(M, classes_per_task)
        out["vclimb_bwf"] = vclimb_bwf(M, classes_per_task)
    return {k: float(v) for k, v in out.items()}
