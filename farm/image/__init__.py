"""The MANGOS image: assembled from the farm's verified .debs and pinned archive packages.

Pipeline (:mod:`farm.image.assemble`): inputs -> rootfs -> erofs -> verity -> signature -> UKI/ESP -> GPT disk;
``verify`` and ``trace`` check an image from its bytes; ``sysext`` makes signed extension images.
"""
