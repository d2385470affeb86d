"""Recognition: which landmark a query shows, and how sure delfx is (`delfx classify`).

The top floor under the CLI: it combines the gallery's features (store), its index and
verification (index) and the trained models (classifier, globalnet).

* `delfx.recognition.recognize`    `Recognizer`: one query's candidates, evidence and answer
* `delfx.recognition.scoring`      per-landmark evidence from verified images; batch demotion
* `delfx.recognition.chance`       how many inliers unrelated images reach (the chance model)
* `delfx.recognition.calibration`  P(correct | evidence), fitted on labelled answers (JSON)
* `delfx.recognition.classify`     `run_classify`: the whole `delfx classify` run
"""
