"""Unit tests of the Python guest SDK under CPython (python3 -m unittest)."""

import json
import os
import tempfile
import unittest

import insitu_guest
from insitu_guest import ArgsError, Job, fl


class Contract(unittest.TestCase):
    def test_parses_the_contract(self):
        job = Job.parse(["wc", "--input2=/data/inputs/2", "--input1", "/data/inputs/1",
                         "--output=/data/outputs", "--logs=/data/logs", "--top", "5", "extra"])
        self.assertEqual(job.name, "wc")
        self.assertEqual([(i.index, i.path) for i in job.inputs],
                         [(1, "/data/inputs/1"), (2, "/data/inputs/2")])
        self.assertEqual((job.output, job.logs), ("/data/outputs", "/data/logs"))
        self.assertEqual(job.args, ["--top", "5", "extra"])
        self.assertEqual(job.arg("top"), "5")
        self.assertIsNone(job.arg("missing"))
        self.assertEqual(Job.parse(["a", "--output=o"]).logs, "o")

    def test_refuses_bad_contracts(self):
        cases = [
            (["a", "--input1=x"], "bad arguments: --output=DIR is required"),
            (["a", "--input2=x", "--output=o"], "bad arguments: --input2 given but --input1 missing; inputs are numbered 1, 2, 3, ..."),
            (["a", "--input1=x", "--input1=y", "--output=o"], "bad arguments: --input1 given twice"),
            (["a", "--input0=x", "--output=o"], "bad arguments: inputs are numbered from 1 (--input1)"),
            (["a", "--output"], "bad arguments: --output needs a directory"),
        ]
        for argv, message in cases:
            with self.assertRaises(ArgsError) as e:
                Job.parse(argv)
            self.assertEqual(str(e.exception), message)

    def test_outputs_are_atomic_and_confined(self):
        with tempfile.TemporaryDirectory() as d:
            job = Job.parse(["a", f"--output={d}"])
            for bad in ["../escape", "/abs", "", "a/../b"]:
                with self.assertRaises(ValueError):
                    job.write_output(bad, b"x")
            with self.assertRaises(RuntimeError):
                with job.create_output("sub/partial.txt") as f:
                    f.write("half")
                    raise RuntimeError("dropped")
            self.assertEqual(sorted(os.listdir(os.path.join(d, "sub"))), [])
            job.write_output("sub/ok.txt", "done")
            with open(os.path.join(d, "sub/ok.txt")) as f:
                self.assertEqual(f.read(), "done")
            job.progress(0.5, 'half "way"')
            job.progress(float("nan"), "x")
            with open(os.path.join(d, "progress.jsonl")) as f:
                self.assertEqual(f.read(), '{"fraction":0.5000,"message":"half \\"way\\""}\n'
                                           '{"fraction":0.0000,"message":"x"}\n')

    def test_main_maps_outcomes_to_exit_codes(self):
        with tempfile.TemporaryDirectory() as d:
            self.assertEqual(insitu_guest.main(lambda job: None, ["a"]), insitu_guest.EXIT_USAGE)
            self.assertEqual(insitu_guest.main(lambda job: None, ["a", f"--output={d}"]), 0)

            def fails(job):
                raise OSError("disk on fire")
            self.assertEqual(insitu_guest.main(fails, ["a", f"--output={d}"]), 1)

    def test_input_files_are_sorted_and_recursive(self):
        with tempfile.TemporaryDirectory() as d:
            os.makedirs(os.path.join(d, "in/b"))
            for p in ["in/b/z.csv", "in/a.csv", "in/c.csv"]:
                open(os.path.join(d, p), "w").close()
            job = Job.parse(["a", f"--input1={d}/in", f"--output={d}"])
            self.assertEqual([os.path.relpath(p, d) for p in job.input_files()],
                             ["in/a.csv", "in/b/z.csv", "in/c.csv"])


class Federated(unittest.TestCase):
    def test_models_and_updates_round_trip(self):
        with tempfile.TemporaryDirectory() as d:
            for sub in ["data", "model", "out"]:
                os.makedirs(os.path.join(d, sub))
            argv = ["t", f"--input1={d}/data", f"--input2={d}/model", f"--output={d}/out"]
            job = Job.parse(argv + ["--fl-round=0"])
            self.assertIsNone(fl.global_model(job))
            self.assertEqual([i.index for i in fl.datasets(job)], [1])
            with open(os.path.join(d, "model", fl.MODEL_FILE), "wb") as f:
                f.write(fl.encode([1.5, -2.0]))
            self.assertEqual(fl.global_model(Job.parse(argv + ["--fl-round=1"])), [1.5, -2.0])
            self.assertIsNone(fl.global_model(Job.parse(argv)))
            fl.write_update(job, [0.25, 3.0], 7)
            with open(os.path.join(d, "out", fl.UPDATE_FILE), "rb") as f:
                self.assertEqual(fl.decode(f.read()), [0.25, 3.0])
            with open(os.path.join(d, "out", fl.UPDATE_META)) as f:
                self.assertEqual(json.load(f), {"weight": 7, "len": 2})
            with self.assertRaises(ValueError):
                fl.write_update(job, [float("inf")], 1)
            with self.assertRaises(ValueError):
                fl.write_update(job, [1.0], 0)
            with self.assertRaises(ValueError):
                fl.decode(b"123")


if __name__ == "__main__":
    unittest.main()
