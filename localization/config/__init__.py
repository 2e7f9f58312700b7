"""The run config: ``schema`` (typed sections and defaults), ``loading`` (YAML, ``--set``, the strict
typed reader) and ``validation`` (range and cross-field rules). Import the module you need."""
