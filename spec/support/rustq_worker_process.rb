# frozen_string_literal: true

require "tempfile"

# A `rustq-worker` process (exe/rustq-worker, without Bundler) on the private Redis.
class RustqWorkerProcess
  ROOT = File.expand_path("../..", __dir__)
  EXE = File.join(ROOT, "exe", "rustq-worker")

  attr_reader :pid

  def initialize(*args, chdir: ROOT, env: {})
    @args = args
    @chdir = chdir
    @env = env
    @log = Tempfile.new(["rustq-worker", ".log"])
  end

  def start
    env = {"REDIS_URL" => REDIS_SERVER.url, "RAILS_ENV" => "development"}.merge(@env)
    @pid = Process.spawn(env, "ruby", "-I", File.join(ROOT, "lib"), EXE, *@args,
      chdir: @chdir, in: File::NULL, out: @log.path, err: [:child, :out])
    self
  end

  def log
    File.read(@log.path)
  end

  def signal(name)
    Process.kill(name, @pid)
  end

  # The exit status, once the process has exited (fails the spec with the log after `timeout`).
  def wait(timeout: 60)
    deadline = Time.now + timeout
    loop do
      _, status = Process.wait2(@pid, Process::WNOHANG)
      return status if status
      raise "rustq-worker #{@pid} did not exit in #{timeout} s\n--- log ---\n#{log}" if Time.now > deadline

      sleep 0.05
    end
  end

  # TERM, then wait for it; the exit status.
  def stop
    signal("TERM")
    wait
  ensure
    kill
  end

  # SIGKILL, if it still runs.
  def kill
    return unless @pid

    Process.kill("KILL", @pid)
    Process.wait(@pid)
  rescue Errno::ESRCH, Errno::ECHILD
    nil
  end

  # Polls until the block answers truthy; fails with the worker's log after `timeout`.
  def await(what, timeout: 60)
    deadline = Time.now + timeout
    loop do
      result = yield
      return result if result
      raise "waited #{timeout} s for #{what}\n--- rustq-worker log ---\n#{log}" if Time.now > deadline

      sleep 0.05
    end
  end
end
