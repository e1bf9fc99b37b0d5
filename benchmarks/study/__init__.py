"""The optimizer study: CoolMomentum against tuned and schedule-free baselines.

Protocol (details and the results in ``benchmarks/results/study.md``):

1. **Tuning on validation data only.** The last 10,000 Fashion-MNIST training images are
   held out (``RunConfig.validation``); every tuning run trains on the rest and is scored by
   its final validation accuracy. Workload 1 gives every optimizer the same budget of 6
   trials on a log grid of lr, factors of 2 apart; CoolMomentum's 6 are a two-stage search
   (4 lr with the paper's exponential cooling, then the best lr with the two temperature
   schedules). The grids started where each method's authors recommend; a first run of the
   study found every optimizer's best lr at the top of its grid, so each grid was moved up
   by a factor of 4 (2 of its points new, 4 kept). On every workload a grid whose best
   trial sits at an edge grows by a factor of 2 past it, at most twice (the tables list
   every trial, so each optimizer's count shows). Workloads 2 and 3 keep each optimizer's
   workload-1 choice and tune only lr: the LSTM with 4 trials at 0.5, 1, 2 and 4 times the
   workload-1 value; ResNet-20, whose batch is 4 times smaller (32, the authors' batch),
   with 5 at 1/16 to 1 times it (the linear scaling rule of SGD predicts 1/4, Adam's square
   root rule 1/2).
   Every optimizer is evaluated with batch norm's statistics recomputed at its evaluated
   weights (``RunConfig.recompute_batch_norm``, 50 batches), as schedule-free needs anyway:
   ResNet-20's running statistics (momentum 0.01, as in Keras) otherwise lag the weights by
   hundreds of steps.
2. **A change the Langevin picture suggests**, tested on validation: the paper's schedules
   stop cooling at the temperature of ``rho = 0`` (the step stays ``lr / 2``); the variant
   cools rho over the first 80 % of the steps and then lowers the step linearly to 0
   (``lr_schedule="wsd"`` with ``lr_decay_fraction=0.2``). Both arms run 3 seeds per workload.
3. **Final runs** train on all the workload's images (the held-out ones given back) with each
   chosen setting, and CoolMomentum's untuned paper settings, over 3 seeds, and are the only
   runs that read the test set. They also measure the loss over the whole training set at the
   final weights in evaluation mode.
4. **Budget**: on workload 1 the chosen settings also train for 1, 2 and 10 epochs (2
   seeds), without re-tuning lr; CoolMomentum's cooling and the cosine follow the length.

Sizes (``--plan full``, about 5 hours of 2 cores): workload 1 trains 5 epochs (the budget
runs show 1 to 10), workload 2 the first 10,000 images for 5 epochs, workload 3 5 epochs.
``--plan small`` keeps the protocol at sizes that fit about 2 hours (``small_plan``).

The package: :mod:`.plan` (pure: the trials each stage asks for), :mod:`.runner` (training
them, resumable, ``jobs`` at a time), :mod:`.records` (a finished trial's result) and
:mod:`.report` (the results files). Every run is a harness run
(``coolmomentum.experiments``) in a folder of ``--work`` named after the plan (so a plan of
other sizes never reuses a run by accident) and is saved as it ends; ``--reuse DIR`` takes a
planned run from an earlier plan's folder where that run's every harness setting is the same
(the results name how many came from where); an interrupted study continues where it stopped
when the same command is run again (a run cut off mid-way resumes from its last checkpoint);
``--report`` writes the results files from the runs finished so far, marked as partial.
``--quick`` runs the whole pipeline on a tiny subset for one epoch (a test runs it).

    python -m benchmarks.study --jobs 2                 # the full study, hours on 2 cores
    python -m benchmarks.study --plan small --report    # the tables of the runs done so far
    python -m benchmarks.study --quick --work /tmp/q --results /tmp/q/results
"""

from .plan import PLANS, Plan, Trial, Workload, planned_trials, quick_plan, steps_per_epoch
from .records import TrialResult, load_results, mean_std
from .runner import execute, reused, run_study

__all__ = [
    "PLANS",
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
    "steps_per_epoch",
]
