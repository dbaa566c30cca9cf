"""RoboStack: sim-to-real robot learning."""
__version__ = "0.1.0"


def _map_source_subpackages() -> None:
    """Import ``robostack.sim``, ``.policies`` and ``.real`` from a source tree, where they are top-level folders.

    An installed robostack has them inside robostack/ (setup.py's package_dir), and setuptools' editable
    finder maps them for ``pip install -e``: then this does nothing. What is left is robostack imported
    straight from a checkout: colcon ``--symlink-install`` links only robostack/ into its build folder and puts
    that folder on PYTHONPATH. There a finder maps exactly these three names (never a bare ``sim``, never
    another folder of the checkout) to the folders beside robostack/; deeper modules follow their __path__.
    """
    import importlib.util
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    names = ("sim", "policies", "real")
    root = here.parent
    if (here / "sim").is_dir() or not all((root / n / "__init__.py").is_file() for n in names):
        return  # installed layout, or not a source tree
    found = importlib.util.find_spec(f"{__name__}.sim")
    if found is not None and found.origin and Path(found.origin).resolve() == root / "sim" / "__init__.py":
        return  # setuptools' editable finder of this very checkout maps them already

    if any(getattr(f, "robostack_root", None) == root for f in sys.meta_path):
        return  # mapped already (robostack reloaded)

    class _SourceTreeFinder:
        robostack_root = root

        @staticmethod
        def find_spec(fullname, path=None, target=None):
            prefix, _, name = fullname.rpartition(".")
            if prefix != __name__ or name not in names:
                return None
            return importlib.util.spec_from_file_location(
                fullname, root / name / "__init__.py", submodule_search_locations=[str(root / name)])

    # First, so that these names come from this checkout even where another one is installed in editable mode
    # (its finder would map robostack.sim to that checkout, next to our robostack).
    sys.meta_path.insert(0, _SourceTreeFinder)


_map_source_subpackages()
del _map_source_subpackages
