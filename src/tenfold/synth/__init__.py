"""`tenfold synth`: long documents in, long multi-turn QA conversations out (the paper's training data).

run.py is the verb (settings, the resumable run); corpus.py reads and filters documents, tasks.py and
prompts.py make each task's requests, generators.py sends them (offline, OpenAI-compatible, transformers),
replies.py validates what comes back, cluster.py groups short texts, report.py writes the summary.
"""
