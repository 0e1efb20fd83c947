"""The pack's one ``ComfyExtension``: lists the V3 nodes of every stage (ComfyUI only)."""
from comfy_api.latest import ComfyExtension, io


class DTGenExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        nodes: list[type[io.ComfyNode]] = []
        for stage in _stage_modules():
            nodes.extend(stage.NODES)
        return nodes


def _stage_modules():
    from .adapters import prompt_sampler as prompting
    from .adapters import clip_filter as filtering
    from .adapters import dataset as dataset
    from .adapters import fewshot_images as fewshot
    from .adapters import train_checkpoint as training
    from .adapters import copy_paste as synthesis
    from .adapters import defects
    from .adapters import evaluate as evaluation

    return [fewshot, training, prompting, synthesis, defects, filtering, dataset, evaluation]
