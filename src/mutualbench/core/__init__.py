"""The ground floor: errors, the registry, config keys and their types, the optimizer and schedule, evaluation, the machine's description, progress, network checks."""
