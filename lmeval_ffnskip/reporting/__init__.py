"""Reporting from results files alone (never model internals): loading runs, the HTML report and
its charts, the comparison table, and the regression gate."""
