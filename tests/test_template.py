"""The template chapter under the chapter contract."""
from chapter_contract import ChapterContract


class TestTemplateContract(ChapterContract):
    chapter = "template"
    kill_at = 25  # after the checkpoint of iteration 20 (eval_every at smoke)
    min_seeds: dict = {}  # the template shows the contract; it judges no claim
