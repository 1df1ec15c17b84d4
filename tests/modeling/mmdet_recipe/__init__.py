"""Tests of gcnet_d2.modeling.mmdet_recipe: mmdetection's training components."""
