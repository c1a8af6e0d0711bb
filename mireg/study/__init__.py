"""``mireg study``: does a method help on my data? Every method over labelled amounts and seeds,
settings chosen on validation only, reported with intervals and paired differences.

A study file (TOML, validated like a recipe) names the methods, each a recipe with overrides and an
optional small grid of settings; the labelled amounts (ratios or patient counts); and the seeds. A
seed draws the patient split and every method of a seed trains on that split. For a method with a
grid, every configuration trains on the selection seeds (all seeds unless ``select_seeds`` says
otherwise), the one with the best mean validation DSC is chosen, per labelled amount, and only it
trains on the other seeds. The test split is read only for the report.

Each run is a ``mireg train`` process (a subprocess here, or a Slurm job) on a recipe file the study
writes first; a finished run (one with a test report) is reused, an interrupted one resumed, a
failed one reported with its log and the rest of the study goes on. A killed study continues where
it stopped when run again.

One module per job: :mod:`~mireg.study.spec` (the study file's schema), :mod:`~mireg.study.runs`
(what identifies a run, and reading a finished run's results), :mod:`~mireg.study.plan` (the runs,
their recipes, the choice on validation, where the study stands), :mod:`~mireg.study.runner`
(starting the runs in order and following them on an executor from :mod:`~mireg.study.executors`),
:mod:`~mireg.study.stats` (intervals and paired differences) and :mod:`~mireg.study.report` (the
tables, files and plot); :mod:`~mireg.study.workflow` puts them together as ``mireg study`` does
(:func:`~mireg.study.workflow.open_study`, :func:`~mireg.study.workflow.conduct`).
"""
