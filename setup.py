from setuptools import find_packages, setup

setup(
    name="wsss_d2",
    version="0.1.0",
    description="Weakly-supervised semantic segmentation (CAM, PLDA, CIAN, SAM boxes) for Detectron2",
    packages=find_packages(exclude=("tests", "benchmarks", "tools")),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.0",
        "torchvision",
        "detectron2",
        "fvcore",
        "pycocotools",
        "pydensecrf2==1.1",
        "segment-anything==1.0",
        "opencv-python-headless<4.12",
        "numpy<2",
        "tqdm",
        "matplotlib",
    ],
    extras_require={"test": ["pytest", "pytest-timeout"]},
)
