"""Learning rates over time: functional schedules (``count -> lr``) and torch's stateful
schedulers, which write an optimizer's ``param_groups``."""
