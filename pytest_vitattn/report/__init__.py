"""The HTML attention report and its JSON twin (``pytest --vitattn-report``).

``writer`` writes them; ``views`` computes what the page shows; ``html`` renders the
Jinja2 templates; ``heatmaps`` encodes the images; ``html_extras`` feeds pytest-html.
Importing this package is cheap: numpy, matplotlib and jinja2 load when a report is written.
"""
