"""Automatic checks for the class assignments in notebooks/assignments/ (run by nbgrader's autograder).

`exercises`: one check per student function, compared with toydiff's own implementation on fixed seeds, with
messages that say *why* an answer differs (e.g. the Ho & Salimans weight convention); while a student's function
runs, the library function it is asked to write refuses to work (`forbid`). `measurements`: the numbers a
student's code measures, compared with what toydiff computes on the same seeds (never hard-coded).
"""
from .exercises import (check_autoguidance, check_cfg_combine, check_cfg_denoiser, check_drop_labels,
                        check_euler_step, check_heun_step, check_interval_weight, check_outlier_fraction,
                        check_sampler, check_training_loss, toy_model)
from .design import check_guidance_design
from .measurements import check_method_table, check_sample_tv, check_samples, check_trained_denoiser, method_table

__all__ = ["check_drop_labels", "check_training_loss", "check_cfg_combine", "check_cfg_denoiser", "check_euler_step",
           "check_heun_step", "check_sampler", "check_autoguidance", "check_outlier_fraction", "check_interval_weight",
           "check_trained_denoiser", "check_samples", "check_sample_tv", "method_table", "check_guidance_design", "check_method_table", "toy_model"]
