"""riskflow's library: data, sequences, model, scoring. Imports no Prefect."""

__version__ = "0.1.0"
