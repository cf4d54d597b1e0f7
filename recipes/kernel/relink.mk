# Read after the kernel's own top-level Makefile (make -f Makefile -f relink.mk mangos-bzimage), so that Kbuild's
# whole setup (compiler flags, $(build), the configuration) applies: builds arch/x86/boot/bzImage from the vmlinux in
# the tree. The top-level `bzImage` target would first bring vmlinux up to date by relinking it from every object of
# the kernel, which linux-image-mangos does not have, and which would overwrite the certificate insert-sys-cert put in.
PHONY += mangos-bzimage
mangos-bzimage:
	$(Q)$(MAKE) $(build)=arch/x86/boot arch/x86/boot/bzImage
