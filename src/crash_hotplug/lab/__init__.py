"""The real-kernel lab: Debian kernels in QEMU, kdump loaded with kexec-tools, hot-plug through QMP.

Modules: ``debian`` (package fetch), ``initramfs`` (guest images), ``qemu`` (VM and QMP), ``guest``
(serial shell), ``plan`` (scenario files), ``scenario`` (step runner), ``timing`` (storm timings),
``rundir`` (run directories), ``check`` (against the model).
"""
