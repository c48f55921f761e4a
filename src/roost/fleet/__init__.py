"""Fleet deploys over SSH: inventories, bootstrap, Murder's verbs, one-shot deploy."""
