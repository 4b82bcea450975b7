import subprocess
import sys


def test_client_imports_without_torch():
    code = "import sys, memagent.client; assert 'torch' not in sys.modules, 'client pulled in torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_names_resolve():
    import memagent

    for name in memagent.__all__:
        assert getattr(memagent, name) is not None
