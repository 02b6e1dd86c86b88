"""The MONAI Label app of this bundle: the folder ``monailabel start_server --app`` takes.

``main.py`` (the ``MONAILabelApp``) and ``tasks.py`` need ``monailabel`` and run in the
server's own venv (``scripts/label_venv.sh``); ``inference.py`` and ``training.py`` hold the
work, done through the bundle's own configs, and import only the bundle's dependencies.
"""
