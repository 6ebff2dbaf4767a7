"""How the Python tests report to ctest.

Every Python test file ends with `testrun.main()`. It runs the file's
unittest tests and exits with:

  0   every test ran and passed;
  1   a test failed or raised, or no test ran at all;
  77  every test was skipped (ctest's SKIP_RETURN_CODE: reported as skipped,
      with the reasons printed).

One ctest entry is one result, so a file that passes some tests and skips
others exits 1 with the names: split what can be skipped (a CUDA device, an
optional tool) into a ctest entry of its own. `skip_all(reason)` skips a
whole entry before any test runs (an import that is missing, no device).
"""
import sys
import unittest

SKIP = 77


def skip_all(reason):
    print("SKIP: %s" % reason, flush=True)
    sys.exit(SKIP)


def verdict(result):
    """The exit status for a finished unittest result, as described above."""
    if not result.wasSuccessful():
        return 1
    if result.testsRun == 0:
        print("FAIL: no test ran", flush=True)
        return 1
    if result.skipped:
        reasons = ["  %s: %s" % (t.id(), why) for t, why in result.skipped]
        if len(result.skipped) == result.testsRun:
            print("SKIP: every test was skipped:\n%s" % "\n".join(reasons), flush=True)
            return SKIP
        print("FAIL: %d of %d tests were skipped in one ctest entry; give what can be skipped "
              "an entry of its own:\n%s" % (len(result.skipped), result.testsRun,
                                             "\n".join(reasons)), flush=True)
        return 1
    return 0


def main(suite=None, argv=None):
    """Runs `suite` (default: the tests of __main__, or those named in argv) and exits."""
    if suite is None:
        names = [a for a in (argv or []) if not a.startswith("-")]
        loader = unittest.defaultTestLoader
        module = sys.modules["__main__"]
        suite = (loader.loadTestsFromNames(names, module) if names
                 else loader.loadTestsFromModule(module))
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    sys.exit(verdict(result))
