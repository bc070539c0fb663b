# Type stubs of the native module (python/src/lib.rs). `ftedit/__init__.py` wraps it:
# results cross as JSON text, edits as JSON text or a file path, tensors as torch tensors.
from typing import Callable, List, Optional, Tuple

import torch

class Error(Exception): ...
class InputError(Error): ...
class ModelError(Error): ...
class SettingError(Error): ...
class OutputError(Error): ...

class Model:
    @property
    def source(self) -> str: ...
    @property
    def arch(self) -> str: ...
    @property
    def num_parameters(self) -> int: ...
    def predict(self, prompt: str, top_k: int = 10, chat: bool = False) -> str: ...
    def generate(
        self,
        prompt: str,
        chat: bool = False,
        max_tokens: int = 32,
        top_k: Optional[int] = None,
        temperature: float = 1.0,
        seed: int = 0,
    ) -> str: ...
    def edit(
        self,
        edits: str,
        method: Optional[str] = None,
        recipe: Optional[str] = None,
        settings: List[str] = ...,
        pool: Optional[str] = None,
        health: bool = True,
        general: int = 0,
        neighbours: int = 5,
        progress: bool = True,
        file: bool = False,
        n: Optional[int] = None,
    ) -> str: ...
    def save(self, path: str, dtype: Optional[str] = None, force: bool = False) -> None: ...
    def health(self, general: int = 100, against: Optional["Model"] = None) -> str: ...
    def tensors(self) -> List[Tuple[str, torch.Tensor]]: ...
    def evaluate(
        self,
        data: str,
        out: str,
        n: Optional[int] = None,
        method: Optional[str] = None,
        recipe: Optional[str] = None,
        settings: List[str] = ...,
        protocol: str = "batch",
        batch_size: int = 1,
        generation: bool = True,
        exact_match: bool = True,
        chat: Optional[bool] = None,
        health: bool = True,
        general: int = 10,
        progress: bool = True,
        format: Optional[str] = None,
    ) -> str: ...

def load(model: str, device: str = "cpu", dtype: str = "f32", threads: int = 0) -> Model: ...
def from_state_dict(
    config: str,
    tensors: List[Tuple[str, torch.Tensor]],
    tokenizer: str,
    chat_template: Optional[str] = None,
    device: str = "cpu",
    dtype: str = "f32",
    source: str = "<transformers>",
) -> Model: ...
def methods() -> str: ...
def progress_to(write: Callable[[str], object]) -> None: ...
