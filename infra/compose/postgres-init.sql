-- Airflow's metadata database beside defacto's catalog, on the same local server.
CREATE USER airflow WITH PASSWORD 'airflow';
CREATE DATABASE airflow OWNER airflow;
