"""The nerfstudio glue: method configs, models, pipelines, data managers. Importing it changes
nothing global; our methods' setup makes bad input end as one line (core/errors.py)."""
