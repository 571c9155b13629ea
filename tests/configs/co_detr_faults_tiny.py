# tests/configs/co_detr_reliability_tiny.py plus the fault-injection hook of
# tests/reliability_faults.py (faults chosen with FAULT_* environment variables).
_base_ = './co_detr_reliability_tiny.py'

custom_imports = dict(imports=['projects.codetr', 'tests.reliability_faults'])
custom_hooks = [dict(type='RandomStateHook'), dict(type='FaultInjectionHook')]
