"""Tests of gcnet_d2.checkpoint: conversion, safe loading, atomic writes."""
