"""`grpo report`: one self-contained HTML page (and optional PNGs) of one or several run directories.

load.py reads the run directories (tolerant of a run still going or one that crashed), panels.py says which
metric goes in which panel, figures.py draws them with matplotlib, samples.py and html.py build the page,
cli.py is the command. Only figures.py and cli.py need matplotlib; it is imported when a report is drawn.
"""
