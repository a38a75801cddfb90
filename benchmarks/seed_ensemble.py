"""How much a seed ensemble would gain on a valid split: each checkpoint alone, then all of them as one CRF whose path
score is the mean of theirs (mean emissions, mean transitions), decoded with the same Viterbi; prints JSON.

    python benchmarks/seed_ensemble.py ../shared/data/twitter2017/valid.txt runs/s1/last runs/s2/last runs/s3/last

The checkpoints must share the label set and the text encoder (seeds of one recipe). Text only, fp32, one thread
by default. The ensemble is the ceiling of distilling those seeds into one model: no gain here, no gain there.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.io.conll import read_conll  # noqa: E402
from pipeline.train.evaluate import entity_scores  # noqa: E402
from rpihmif.model import RPIHMIFOutput  # noqa: E402
from rpihmif.predictor import Tagger  # noqa: E402


class MeanPathScore(nn.Module):
    """Several RPIHMIF models as one CRF tagger: mean emissions (B, W, L) and mean CRF transition scores."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        self.models = nn.ModuleList(models)
        self.model_config = models[0].model_config
        self.crf = copy.deepcopy(models[0].crf)
        with torch.no_grad():
            for name, p in self.crf.named_parameters():
                p.copy_(torch.stack([dict(m.crf.named_parameters())[name] for m in models]).mean(0))

    def dataset_ids(self, names: list[str]) -> torch.Tensor | None:
        return self.models[0].dataset_ids(names)

    def forward(self, text, visual=None) -> RPIHMIFOutput:
        outs = [m(text, visual) for m in self.models]
        # shape: (B, W, L)
        emissions = torch.stack([o.emissions.float() for o in outs]).mean(0)
        return RPIHMIFOutput(loss=None, emissions=emissions, word_mask=outs[0].word_mask)

    def decode(self, output: RPIHMIFOutput) -> list[list[int]]:
        return self.crf.decode(output.emissions, output.word_mask)

    def marginals(self, output: RPIHMIFOutput) -> torch.Tensor:
        return self.crf.marginals(output.emissions, output.word_mask)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("split", type=Path, help="a CoNLL split file (e.g. ../shared/data/twitter2017/valid.txt)")
    parser.add_argument("checkpoints", nargs="+", type=Path, help="checkpoint folders (best/ or last/) of one recipe")
    parser.add_argument("--dataset", default="", help="annotation style for dataset_dim models (\"\" = their own)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tweets = read_conll(args.split, fix_bio=True)
    words, gold = [t.words for t in tweets], [t.labels for t in tweets]
    taggers = [Tagger.from_pretrained(c) for c in args.checkpoints]
    if len({tuple(t.config.labels) for t in taggers}) > 1:
        sys.exit("the checkpoints have different label sets")
    singles = {str(c): entity_scores(gold, [p.labels for p in t.predict(words, dataset=args.dataset)])["f1"]
               for c, t in zip(args.checkpoints, taggers)}
    mean = Tagger(MeanPathScore([t.model for t in taggers]), taggers[0].tokenizer, taggers[0].config)
    ensemble = entity_scores(gold, [p.labels for p in mean.predict(words, dataset=args.dataset)])
    print(json.dumps({"split": str(args.split), "singles": singles,
                      "single_mean": round(statistics.mean(singles.values()), 2),
                      "ensemble": ensemble["f1"], "ensemble_per_type": ensemble["per_type"]}, indent=2))


if __name__ == "__main__":
    main()
