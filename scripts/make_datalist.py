"""Write a MONAI datalist (seeded, stratified train/val/test split) and registry entries for a folder
of images; ``--help`` gives the options and examples (``bundle/data/user_folder.py``)."""

from bundle.data.user_folder import main

if __name__ == "__main__":
    main()
