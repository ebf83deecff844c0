"""Sweep files -> runs: parse and check a sweep file, expand its grid, zip and seeds, compose each run's
config from the recipes (Hydra), and name it by a stable hash.

    sweep_file   Sweep: the YAML file, checked, and its expansion into RunSpecs
    spec         RunSpec: one run's resolved config and its stable hash
    compose      recipes (seedrun/recipes/, after any $SEEDRUN_RECIPES folders) composed by Hydra; override checks
    settings     the config keys that tell experiments apart (what tables group by)

Imports neither torch nor SQLAlchemy: planning a sweep is fast and needs no database.
"""
