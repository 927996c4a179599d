# Runtime shared by every config: mmseg's default runtime (inherited through mmengine's package scope,
# so it follows the installed mmsegmentation), plus the suite's modules and the zero-shot checkpoint hook.
_base_ = ['mmseg::_base_/default_runtime.py']

custom_imports = dict(imports=['alignzeg.mmseg_modules'], allow_failed_imports=False)

# Stores the split (class names, unseen names) in every checkpoint and checks it on load.
custom_hooks = [dict(type='ZeroShotMetaHook')]

# Seed for the whole run (overridden by `alignzeg train --seed`).
randomness = dict(seed=0, deterministic=False)
