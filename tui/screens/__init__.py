"""The dashboard's screens: the overview, one patient, help and the action dialogs."""
