"""The nerfstudio glue: method configs, models, pipelines, data managers. Importing it (ns-train
loads the method configs; ns-eval / ns-export load a run's config.yml) makes bad input end as one
line instead of a traceback (core/errors.py)."""

from ilrm_nerfstudio.core.errors import install_excepthook

install_excepthook()
