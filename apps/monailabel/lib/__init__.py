"""The PerceptGuide app's parts, in MONAI Label's sample-app layout.

``infers/`` and ``trainers/`` hold the MONAI Label tasks (they need ``monailabel`` and run in the
server's own venv, ``scripts/label_venv.sh``); ``inference.py`` and ``training.py`` hold the
work, done through the bundle's own configs, and import only the bundle's dependencies.
"""
