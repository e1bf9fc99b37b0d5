"""The optimizer study: where CoolMomentum stands against tuned and schedule-free rivals as
runs grow, with each cooling shape tuned on its own.

The question: how does the gap between the best CoolMomentum setting and the best rival move
as the run grows, with every arm re-tuned at every length? Protocol (the stages in detail:
:mod:`.plan`; the results: ``benchmarks/results/study.md``):

- **Workloads and budgets**, counted in optimizer steps of the final runs (all 60,000
  Fashion-MNIST training images, batch 128): an MLP 784-256-256-10 at 1,560 / 7,800 / 50,000
  steps; the convnet at 1 / 3 / 10 epochs (468 / 1,404 / 4,680 steps). ResNet-20 and the
  LSTM keep the one budget of the study's earlier plan (``results/study_small.md``): their
  rows are read from its results, not trained again.
- **Arms**: SGD and AdamW with a cosine decay to 0, schedule-free SGD and AdamW (as their
  authors prescribe: warm-up, evaluation at the averaged weights), AdamW with its first beta
  cooled along ``linear-temperature`` from 0.9 and a constant lr after the warm-up (Demon
  AdamW), CoolMomentum in three cooling shapes (``linear-temperature``,
  ``cosine-temperature``, the paper's ``exponential``), each tuned on its own, and the
  paper's settings untuned (lr 0.01, rho_0 0.99, Eq. 20). The convnet's two longer budgets
  keep SGD, schedule-free AdamW, the cooled AdamW, the two best CoolMomentum shapes and the
  paper's settings.
- **Tuning on validation data only**: the last 10,000 training images are held out, a tuning
  trial trains on the rest for as many epochs as the final runs and is scored by its final
  validation accuracy. Every tuned arm gets a grid of factors of 2 at the first budget and a
  local grid (x1/2, x1, x2) around its previous choice at each later one; a grid whose best
  trial sits at an edge grows past it, at most twice. The best CoolMomentum shape also tries
  rho_0 0.9 and 0.95 at the first budget, and a momentum warm-up where its hot start failed.
  Two CoolMomentum rows sum up the shapes: the best of the first N trials in the order
  declared in :data:`.plan.COOLMOMENTUM_ARMS` (N: the largest trial count of a rival arm at
  that budget), and the best over all its trials.
- **Final runs** train on all the training images with each choice, over 2 seeds (3 at the
  MLP's longest budget), read the test set, and measure the loss over the whole training set
  in evaluation mode at the end.
- **Diagnosis**: each shape's mean effective step ``lr (1 + rho) / (2 (1 - rho))`` at its
  choice, and each other shape tried once at the best shape's mean effective step.

The package: :mod:`.plan` (pure: the trials each stage asks for), :mod:`.runner` (training
them: each a harness run, resumable, ``jobs`` at a time), :mod:`.records` (a finished trial's
result, and the committed record of all of them) and :mod:`.report` (the results files).
Every trial is saved as it ends, in the plan's folder of ``--work`` and in
``results/study_runs.json``, which is committed: a study continues where it stopped, also on
another machine, when the same command is run again (a trial cut off mid-way resumes from its
last checkpoint where its folder is still there). ``--reuse DIR`` takes a planned trial from
an earlier plan's folder where every harness setting is the same; ``--report`` writes the
results files from the trials finished so far, marked as partial. ``--quick`` runs the whole
pipeline on a few dozen images (a test runs it).

    python -m benchmarks.study --jobs 2 --threads 1 --data-dir /usr/share/datasets/fashion-mnist
    python -m benchmarks.study --report          # the tables of the trials done so far
    python -m benchmarks.study --quick --work /tmp/q --results /tmp/q/results
"""

from .plan import PLANS, Plan, Trial, Workload, planned_trials, quick_plan, stages
from .records import Archive, TrialResult, load_results, mean_std
from .runner import execute, reused, run_study

__all__ = [
    "PLANS",
    "Archive",
    "Plan",
    "Trial",
    "TrialResult",
    "Workload",
    "execute",
    "load_results",
    "mean_std",
    "planned_trials",
    "quick_plan",
    "reused",
    "run_study",
    "stages",
]
