"""`tenfold eval`: one module per benchmark (needle, passkey, topic, ruler, longbench, infbench, mmlu),
each a plain function `run_<name>(backend, output_dir, **options) -> summary`; backends.py loads the
model, runner.py resumes and batches cases, plots.py draws, suite.py runs them all side by side."""
